"""A sweep's state file and its storage: the one reader and writer of `dpo_sweep.json`.

The state file is written beside Ray's results before the first trial starts: the sweep's name, its
MLflow experiment and parent run, and its config. `resume`, `sync-mlflow` and `report` start from it,
without the original command line. Storage is a local directory or a `pyarrow.fs` URI (s3://, gs://).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainables.config import ConfigError, InputError

SWEEP_FILE = "dpo_sweep.json"


class SweepNotFound(InputError, FileNotFoundError):
    """No sweep where the user pointed; the message says what to give instead."""


def is_uri(path: str) -> bool:
    return "://" in path


def join_path(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if is_uri(base) else str(Path(base) / name)


def _fs(path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


def write_text(path: str, text: str) -> None:
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        return
    fs, inner = _fs(path)
    with fs.open_output_stream(inner) as f:
        f.write(text.encode())


def read_text(path: str) -> str | None:
    """The file's text, or None when there is no such file."""
    if not is_uri(path):
        return Path(path).read_text() if Path(path).is_file() else None
    import pyarrow.fs

    fs, inner = _fs(path)
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(inner) as f:
        return f.read().decode()


def upload_dir(local: Path, target: str) -> None:
    """Copy the files of a local directory to a storage URI (the analysis, when results live in the cloud)."""
    import pyarrow.fs

    fs, inner = _fs(target)
    fs.create_dir(inner, recursive=True)  # object stores have no directories; a file:// target needs it
    pyarrow.fs.copy_files(str(local), inner, destination_filesystem=fs)


@dataclass
class SweepState:
    """A sweep's identity, written before the first trial starts: enough to resume it after the driver
    died, to rebuild its MLflow runs, or to regenerate its report, without the original command line."""

    name: str
    experiment_path: str
    tracking_uri: str  # redacted when it carried credentials: pass --tracking-uri again then
    experiment_id: str
    parent_run_id: str
    config: dict[str, Any]
    gpu_per_trial: float = 0.0  # as preflight resolved it ('auto' -> 1/k): each trial's share of a GPU
    reference: dict[str, Any] | None = None  # the shared reference: {key, seconds, computed}, once prepared
    swept: list[str] | None = None  # the space's keys as preflight made them canonical (None: an older sweep)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self) -> None:
        write_text(join_path(self.experiment_path, SWEEP_FILE), self.to_json())

    @classmethod
    def parse(cls, text: str, source: str) -> SweepState:
        """A state file's text as a SweepState; ConfigError naming the file and what is wrong with it."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError([(f"not valid JSON ({e.msg} at line {e.lineno}); the file is damaged: restore it "
                               "from a backup, or re-run the sweep")], source=source) from None
        fields = list(cls.__dataclass_fields__)
        required = [k for k, f in cls.__dataclass_fields__.items() if f.default is dataclasses.MISSING]
        if not isinstance(raw, dict):
            raise ConfigError([f"expected a JSON object with {', '.join(required)}"], source=source)
        missing = [k for k in required if k not in raw]
        if missing:
            raise ConfigError([(f"missing {', '.join(missing)}: the file is damaged or not a dpo-sweep state file; "
                               "restore it from a backup, or re-run the sweep")], source=source)
        if not isinstance(raw["config"], dict):
            raise ConfigError(["config: expected a mapping (the sweep config)"], source=source)
        return cls(**{k: raw[k] for k in fields if k in raw})

    @classmethod
    def load(cls, experiment_path: str) -> SweepState:
        path = join_path(experiment_path, SWEEP_FILE)
        text = read_text(path)
        if text is None:
            raise SweepNotFound(f"{experiment_path}: not a dpo-sweep experiment directory (no {SWEEP_FILE}); give "
                                "the directory `dpo-sweep run` printed, under storage.path")
        return cls.parse(text, path)

    def sweep_config(self):
        from orchestrator.config import validate_sweep_config

        return validate_sweep_config(self.config, source=join_path(self.experiment_path, SWEEP_FILE))

    def analysis_dir(self) -> Path:
        """Where the analysis files are written: beside Ray's results, or - when those are in the cloud - in
        the local cache (DPO_SWEEP_CACHE, else ~/.cache/dpo-sweep), then uploaded beside them."""
        if not is_uri(self.experiment_path):
            return Path(self.experiment_path) / "analysis"
        from trainables.cache import cache_root

        return cache_root() / "sweeps" / self.name / "analysis"


def find_experiment(ref: str, storage: str, log=print) -> str:
    """The experiment directory of a sweep: its path or URI, its run name under `storage`, or a sweep or MLflow
    experiment name (its latest sweep under `storage`)."""
    if is_uri(ref) or (Path(ref) / SWEEP_FILE).is_file():
        return ref if is_uri(ref) else str(Path(ref).resolve())
    if (Path(storage) / ref / SWEEP_FILE).is_file():
        return str((Path(storage) / ref).resolve())
    candidates = sorted(Path(storage).glob(f"*/{SWEEP_FILE}"), key=lambda p: p.stat().st_mtime)
    named = []
    for state_file in candidates:
        try:
            state = SweepState.parse(state_file.read_text(), str(state_file))
        except ConfigError:
            continue  # a damaged file elsewhere under storage says nothing about this lookup
        config = state.config
        if ref in (config.get("name"), (config.get("tracking") or {}).get("experiment")):
            named.append(state_file.parent)
    if named:
        log(f"[sweep] {ref!r}: the latest of its {len(named)} sweep(s) under {storage}: {named[-1].name}")
        return str(named[-1].resolve())
    known = ", ".join(p.parent.name for p in candidates[-5:]) or "none"
    raise SweepNotFound(
        f"no sweep {ref!r}: give the experiment directory `dpo-sweep run` printed (Ray results: ...), a sweep run "
        f"name under {storage} (latest there: {known}), or pass --storage to look elsewhere")
