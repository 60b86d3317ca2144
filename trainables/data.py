"""Preference data: load, validate every row before training, split.

Sources: `synthetic` (the tiny model's bundled task), `arithmetic` (the bundled chat task for real
instruct models, `trainables/arithmetic.py`), a `.jsonl` / `.json` / `.parquet` file,
a `datasets` `save_to_disk` directory, or anything `datasets.load_dataset`
takes (a hub id, or a local directory of data files - the same code path).
Rows are standard (`prompt`/`chosen`/`rejected` strings) or conversational
(lists of `{"role", "content"}` messages).

Validation finds every bad row at once and names file, row and column: a
missing column, None, a non-string, empty text, chosen identical to rejected,
and a prompt that alone reaches max_length (TRL would drop that row silently).
With `drop_invalid` such rows are dropped instead, and counted by reason.

    python -c "from trainables.data import *; from trainables.config import DataSettings, InputError; \\
print(read_rows('my_prefs.jsonl')[:1])"
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.config import DataSettings, InputError
from trainables.synthetic import make_task

COLUMNS = ("prompt", "chosen", "rejected")
MAX_SHOWN_PER_KIND = 20


class DataError(InputError, ValueError):
    """Every problem of a dataset, each with file, row and column."""


@dataclass(frozen=True)
class RowProblem:
    source: str
    row: int  # 1-based; for JSONL the line number
    column: str | None
    kind: str
    detail: str

    def __str__(self) -> str:
        col = f", column '{self.column}'" if self.column else ""
        return f"{self.source}: row {self.row}{col}: {self.detail}"


@dataclass
class PreferenceData:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    # Bundled tasks only: (prompt, right answer); the prompt is a string, or messages for a chat task.
    probes: list[tuple[Any, str]] = field(default_factory=list)
    conversational: bool = False
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped (drop_invalid)
    # The first held-out rows with every column they have: the generation evaluation's prompts, and the keyword
    # arguments its reward functions get (trainables.generation).
    eval_full: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""

    def dropped_text(self) -> str:
        """'drop_invalid dropped 3 row(s): bad JSON 1, chosen == rejected 2', or '' when none was dropped."""
        if not self.dropped:
            return ""
        return (f"drop_invalid dropped {sum(self.dropped.values())} row(s): "
                + ", ".join(f"{k} {v}" for k, v in self.dropped.items()))


# ---------------------------------------------------------------- reading

def _read_jsonl(path: Path) -> tuple[list[dict], list[int], list[RowProblem]]:
    rows, lines, problems = [], [], []
    with path.open() as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(RowProblem(str(path), n, None, "bad JSON", f"not valid JSON ({e.msg}); fix or remove the line"))
                continue
            if not isinstance(obj, dict):
                problems.append(RowProblem(str(path), n, None, "not an object",
                                           f"expected a JSON object with {', '.join(COLUMNS)}, got {type(obj).__name__}"))
                continue
            rows.append(obj)
            lines.append(n)
    return rows, lines, problems


def read_rows(source: str, split: str = "train") -> tuple[list[dict], list[int], list[RowProblem]]:
    """(rows, row numbers, read problems) of a file, a saved dataset dir, or a `load_dataset` id/dir. A file
    that cannot be read at all (not UTF-8, a damaged parquet or saved dataset) is a DataError naming it."""
    try:
        return _read_rows(source, split)
    except UnicodeDecodeError as e:
        raise DataError(f"{source}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8 JSON Lines") from None
    except DataError:
        raise
    except Exception as e:
        if not Path(source).expanduser().exists():
            raise
        raise DataError(f"{source}: cannot be read as preference data ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}); it may be damaged or not the format its "
                        "name says: write it again") from None


def _read_rows(source: str, split: str) -> tuple[list[dict], list[int], list[RowProblem]]:
    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".json":
            text = path.read_text()
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                return _read_jsonl(path)  # JSON Lines with a .json name
            if isinstance(data, dict):
                data = [data]
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of objects with {', '.join(COLUMNS)} (or JSON Lines), "
                                f"got {type(data).__name__} at the top level")
            rows, numbers, problems = [], [], []
            for n, obj in enumerate(data, start=1):
                if isinstance(obj, dict):
                    rows.append(obj)
                    numbers.append(n)
                else:
                    problems.append(RowProblem(str(path), n, None, "not an object",
                                               f"expected a JSON object with {', '.join(COLUMNS)}, "
                                               f"got {type(obj).__name__}"))
            return rows, numbers, problems
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
            return rows, list(range(1, len(rows) + 1)), []
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")

    import datasets

    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: no split {split!r} (splits: {', '.join(ds)}); set data.split")
            ds = ds[split]
    else:
        # A hub id is 'owner/name'; a name with a data-file suffix is a file the user meant to give.
        looks_local = (source.startswith((".", "/", "~")) or source.count("/") > 1
                       or path.suffix.lower() in (".jsonl", ".json", ".parquet", ".csv"))
        if looks_local and not path.exists():
            raise DataError(f"data.source: {source!r} does not exist; give a file, a directory or a hub dataset id")
        try:
            ds = datasets.load_dataset(str(path) if path.is_dir() else source, split=split)
        except Exception as e:  # datasets raises many types; the user needs the message
            raise DataError(f"data.source: could not load {source!r} (split {split!r}): {e}") from e
    rows = ds.to_list()
    return rows, list(range(1, len(rows) + 1)), []


# ---------------------------------------------------------------- validation

def _is_conversational(row: dict) -> bool:
    return isinstance(row.get("prompt"), list) or isinstance(row.get("chosen"), list)


def _check_messages(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return f"expected a non-empty list of {{'role', 'content'}} messages, got {_short(value)}"
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"message {i} must be a mapping with 'role' and 'content', got {_short(m)}"
        if not isinstance(m["content"], str):
            return f"message {i} content must be a string, got {type(m['content']).__name__}"
        if not m["content"].strip():
            return f"message {i} content is empty"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _prompt_tokens(tokenizer, prompt: Any, conversational: bool) -> int:
    if conversational:
        return len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"])
    return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def check_rows(rows: list[dict], numbers: list[int], source: str, *, tokenizer=None, max_length: int | None = None,
               truncation_mode: str = "keep_start") -> tuple[list[RowProblem], bool]:
    """(problems, conversational) for every row; nothing is raised here."""
    problems: list[RowProblem] = []
    if not rows:
        return [RowProblem(source, 0, None, "empty", "the dataset has no rows")], False
    conversational = _is_conversational(rows[0])
    fmt = "conversational" if conversational else "standard"
    present = set().union(*(r.keys() for r in rows))
    for col in COLUMNS:
        if col not in present:
            problems.append(RowProblem(source, numbers[0], col, "missing column",
                                       f"column '{col}' is missing from every row (columns found: "
                                       f"{', '.join(sorted(present)) or 'none'}); rename yours to "
                                       f"{', '.join(COLUMNS)}"))
    if conversational and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        problems.append(RowProblem(source, numbers[0], "prompt", "no chat template",
                                   "conversational rows need a tokenizer with a chat template; this model has none"))
        tokenizer = None
    check_length = tokenizer is not None and max_length is not None and truncation_mode == "keep_start"
    for row, n in zip(rows, numbers, strict=True):
        bad = False
        for col in COLUMNS:
            if col not in present:
                continue
            if col not in row:
                problems.append(RowProblem(source, n, col, "missing column", "column missing in this row"))
                bad = True
                continue
            v = row[col]
            if v is None:
                problems.append(RowProblem(source, n, col, "None", "value is None (null); fill it or drop the row"))
                bad = True
            elif conversational:
                msg = _check_messages(v)
                if msg:
                    problems.append(RowProblem(source, n, col, "bad messages", f"{fmt} dataset: {msg}"))
                    bad = True
            elif not isinstance(v, str):
                problems.append(RowProblem(source, n, col, "not a string",
                                           f"{fmt} dataset: expected a string, got {type(v).__name__} {_short(v)}"))
                bad = True
            elif not v.strip():
                problems.append(RowProblem(source, n, col, "empty text", "text is empty"))
                bad = True
        if bad or any(c not in row for c in COLUMNS):
            continue
        if row["chosen"] == row["rejected"]:
            problems.append(RowProblem(source, n, "rejected", "chosen == rejected",
                                       "chosen and rejected are identical; the pair carries no preference"))
            continue
        if check_length:
            n_tok = _prompt_tokens(tokenizer, row["prompt"], conversational)
            if n_tok >= max_length:
                problems.append(RowProblem(source, n, "prompt", "prompt too long",
                                           f"prompt alone is {n_tok} tokens >= max_length {max_length}; TRL would "
                                           "drop this row silently. Raise dpo.max_length or shorten the prompt"))
    return problems, conversational


def summarize_problems(problems: list[RowProblem]) -> str:
    by_kind: dict[str, list[RowProblem]] = defaultdict(list)
    for p in problems:
        by_kind[p.kind].append(p)
    lines = [f"{len(problems)} invalid row(s) found before training:"]
    for kind, items in by_kind.items():
        lines.append(f"  {kind}: {len(items)} row(s)")
        lines += [f"    {p}" for p in items[:MAX_SHOWN_PER_KIND]]
        if len(items) > MAX_SHOWN_PER_KIND:
            lines.append(f"    ... and {len(items) - MAX_SHOWN_PER_KIND} more")
    lines.append("Fix the rows, or set data.drop_invalid=true to drop them and train on the rest.")
    return "\n".join(lines)


# ---------------------------------------------------------------- the entry point

def _split(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * fraction))
    if n_eval >= len(rows):
        raise DataError(f"data.eval_fraction={fraction} leaves no training rows out of {len(rows)}")
    eval_idx = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in eval_idx], [r for i, r in enumerate(rows) if i in eval_idx]


EVAL_FULL_ROWS = 1024  # held-out rows kept whole: more than any generation evaluation completes


def _only_columns(rows: list[dict]) -> list[dict]:
    return [{c: r[c] for c in COLUMNS} for r in rows]


def load_preference_data(settings: DataSettings, tokenizer=None, max_length: int | None = None,
                         truncation_mode: str = "keep_start") -> PreferenceData:
    """Train/eval rows, validated. Raises DataError naming every bad row unless drop_invalid."""
    probes: list[tuple[Any, str]] = []
    task_name = settings.builtin_task
    if task_name:
        if task_name == "arithmetic":
            from trainables.arithmetic import make_task as make_arithmetic

            task = make_arithmetic(settings.arithmetic)
            kind = f"arithmetic chat task ({settings.arithmetic.form} answers)"
        else:
            task = make_task(settings.synthetic)
            kind = "synthetic task"
        sets = [(f"{task_name}:train", task.train, list(range(1, len(task.train) + 1)), []),
                (f"{task_name}:eval", task.eval, list(range(1, len(task.eval) + 1)), [])]
        probes = task.probes
        desc = (f"{kind}: {len(task.train)} train pairs ({task.flipped} label-flipped), "
                f"{len(task.eval)} clean eval pairs, {len(task.probes)} probe prompts")
    else:
        rows, numbers, read_problems = read_rows(settings.source, settings.split)
        sets = [(settings.source, rows, numbers, read_problems)]
        if settings.eval_source:
            erows, enums, eprob = read_rows(settings.eval_source, settings.split)
            sets.append((settings.eval_source, erows, enums, eprob))
        desc = settings.source

    problems: list[RowProblem] = []
    kept: list[list[dict]] = []
    formats = set()
    for source, rows, numbers, read_problems in sets:
        found, conv = check_rows(rows, numbers, source, tokenizer=tokenizer, max_length=max_length,
                                 truncation_mode=truncation_mode)
        formats.add(conv)
        problems += read_problems + found
        bad_rows = {p.row for p in found}
        kept.append([r for r, n in zip(rows, numbers, strict=True) if n not in bad_rows])
    if len(formats) > 1:
        raise DataError("the training and eval data mix standard and conversational rows; use one format for both")
    # Problems no row-dropping can fix: a column absent everywhere, no rows, no chat template.
    structural = [p for p in problems if p.kind in ("empty", "no chat template")
                  or (p.kind == "missing column" and "every row" in p.detail)]
    if problems and (not settings.drop_invalid or structural):
        raise DataError(summarize_problems(problems))

    # Rows, not problems: a row with two problems is one row dropped, counted under its first problem.
    reason_of_row: dict[tuple[str, int], str] = {}
    for p in problems:
        reason_of_row.setdefault((p.source, p.row), p.kind)
    dropped = dict(Counter(reason_of_row.values()))
    if settings.eval_source or task_name:
        train, eval_rows = kept[0], kept[1]
    else:
        train, eval_rows = _split(kept[0], settings.eval_fraction, settings.split_seed)
    if not train:
        raise DataError(f"{desc}: no valid training rows left")
    return PreferenceData(train=_only_columns(train), eval=_only_columns(eval_rows), probes=probes,
                          conversational=formats.pop(), dropped=dropped, description=desc,
                          eval_full=[dict(r) for r in eval_rows[:EVAL_FULL_ROWS]])
