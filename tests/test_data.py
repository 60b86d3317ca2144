"""Preference data: every bad-row kind named with file, row and column; formats; splits."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainables.config import DataSettings, ModelSettings
from trainables.data import DataError, load_preference_data, read_rows
from trainables.model import load_tokenizer, resolve_model_path

GOOD = {"prompt": "Q: cat\nA:", "chosen": " CAT", "rejected": " cat"}


@pytest.fixture(scope="module")
def tokenizer(model_cache):
    return load_tokenizer(resolve_model_path(ModelSettings(), model_cache, log=None), ModelSettings())


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def good_rows(n):
    return [{"prompt": f"Q: w{i}\nA:", "chosen": f" W{i}", "rejected": f" w{i}"} for i in range(n)]


@pytest.mark.parametrize(
    ("bad", "column", "needle"),
    [
        ({"prompt": "Q: x\nA:", "chosen": " X"}, "rejected", "column missing in this row"),
        ({**GOOD, "chosen": None}, "chosen", "None"),
        ({**GOOD, "prompt": 7}, "prompt", "expected a string, got int"),
        ({**GOOD, "rejected": "   "}, "rejected", "text is empty"),
        ({**GOOD, "rejected": GOOD["chosen"]}, "rejected", "identical"),
        ({**GOOD, "prompt": "Q: " + "z" * 80}, "prompt", "TRL would drop this row silently"),
    ],
    ids=["missing column", "None", "non-string", "empty", "chosen==rejected", "prompt too long"],
)
def test_each_bad_row_kind_names_file_row_and_column(tmp_path, tokenizer, bad, column, needle):
    rows = good_rows(5)
    rows.insert(3, bad)  # line 4 of the file
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_preference_data(DataSettings(source=str(path)), tokenizer, max_length=64)
    msg = str(err.value)
    assert f"{path}: row 4, column '{column}'" in msg
    assert needle in msg
    assert "1 invalid row(s)" in msg


def test_all_problems_reported_at_once_in_parquet(tmp_path, tokenizer):
    rows = good_rows(6)
    rows[1] = {**GOOD, "chosen": None}
    rows[4] = {**GOOD, "rejected": GOOD["chosen"]}
    path = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError) as err:
        load_preference_data(DataSettings(source=str(path)), tokenizer, max_length=64)
    msg = str(err.value)
    assert f"{path}: row 2, column 'chosen'" in msg and f"{path}: row 5, column 'rejected'" in msg
    assert "2 invalid row(s)" in msg


def test_column_missing_everywhere_is_named_with_the_columns_found(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "q", "chosen": "a", "rejected": "b"}] * 3)
    with pytest.raises(DataError, match=r"column 'prompt' is missing from every row \(columns found: chosen, "
                                        r"question, rejected\)"):
        load_preference_data(DataSettings(source=str(path), drop_invalid=True), tokenizer, max_length=64)


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n")
    rows, _, problems = read_rows(str(path))
    assert len(rows) == 1 and [p.row for p in problems] == [2] and "not valid JSON" in problems[0].detail


def test_drop_invalid_reports_what_was_dropped(tmp_path, tokenizer):
    rows = good_rows(20) + [{**GOOD, "chosen": None}, {**GOOD, "rejected": GOOD["chosen"]},
                            {**GOOD, "rejected": GOOD["chosen"]}, {**GOOD, "chosen": None, "rejected": None}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    data = load_preference_data(DataSettings(source=str(path), drop_invalid=True, eval_fraction=0.25),
                                tokenizer, max_length=64)
    # Rows, not problems: the last row has two problems and is one row dropped.
    assert data.dropped == {"None": 2, "chosen == rejected": 2}
    assert data.dropped_text() == "drop_invalid dropped 4 row(s): None 2, chosen == rejected 2"
    assert len(data.train) + len(data.eval) == 20 and len(data.eval) == 5


def test_seeded_split_is_deterministic_and_disjoint(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", good_rows(40))
    a = load_preference_data(DataSettings(source=str(path), split_seed=3), tokenizer, max_length=64)
    b = load_preference_data(DataSettings(source=str(path), split_seed=3), tokenizer, max_length=64)
    c = load_preference_data(DataSettings(source=str(path), split_seed=4), tokenizer, max_length=64)
    assert a.eval == b.eval and a.eval != c.eval
    assert not {r["prompt"] for r in a.train} & {r["prompt"] for r in a.eval}


def test_explicit_eval_file_is_used_as_is(tmp_path, tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", good_rows(10))
    evals = write_jsonl(tmp_path / "eval.jsonl", good_rows(3))
    data = load_preference_data(DataSettings(source=str(train), eval_source=str(evals)), tokenizer, max_length=64)
    assert len(data.train) == 10 and data.eval == good_rows(3)


def test_save_to_disk_directory_and_load_dataset_path(tmp_path, tokenizer):
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(good_rows(12))}).save_to_disk(str(saved))
    data = load_preference_data(DataSettings(source=str(saved)), tokenizer, max_length=64)
    assert len(data.train) + len(data.eval) == 12
    with pytest.raises(DataError, match="no split 'test'"):
        load_preference_data(DataSettings(source=str(saved), split="test"), tokenizer, max_length=64)

    # A directory of data files goes through `datasets.load_dataset`, the same call a hub id takes.
    repo = tmp_path / "hub-like"
    repo.mkdir()
    write_jsonl(repo / "train.jsonl", good_rows(12))
    data = load_preference_data(DataSettings(source=str(repo)), tokenizer, max_length=64)
    assert len(data.train) + len(data.eval) == 12


def test_missing_local_path_is_a_clear_error(tokenizer):
    with pytest.raises(DataError, match=r"data.source: './nope/prefs' does not exist"):
        load_preference_data(DataSettings(source="./nope/prefs"), tokenizer, max_length=64)


def test_conversational_rows_are_validated(tmp_path, tokenizer):
    good = {"prompt": [{"role": "user", "content": "Q: cat"}], "chosen": [{"role": "assistant", "content": "CAT"}],
            "rejected": [{"role": "assistant", "content": "cat"}]}
    bad = {**good, "chosen": [{"role": "assistant"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [good, good, bad])
    with pytest.raises(DataError, match=r"row 3, column 'chosen': conversational dataset: message 0 must be a "
                                        r"mapping with 'role' and 'content'"):
        load_preference_data(DataSettings(source=str(path)), tokenizer, max_length=64)
    path = write_jsonl(tmp_path / "chat-ok.jsonl", [good] * 8)
    data = load_preference_data(DataSettings(source=str(path)), tokenizer, max_length=64)
    assert data.conversational and len(data.train) == 7


@pytest.mark.parametrize(("text", "needle"), [
    ("[1, 2, 3]", "row 1: expected a JSON object with prompt, chosen, rejected, got int"),
    ('[{"prompt": "Q", "chosen": " A", "rejected": " a"}, "oops"]', "row 2: expected a JSON object"),
    ("7", "expected a JSON list of objects with prompt, chosen, rejected (or JSON Lines), got int"),
    ('"text"', "got str at the top level"),
])
def test_a_json_file_of_the_wrong_shape_is_a_data_error_naming_the_file(tmp_path, text, needle):
    path = tmp_path / "prefs.json"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        load_preference_data(DataSettings(source=str(path)))
    assert needle in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("latin1.jsonl", '{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'.encode("latin-1"), "not UTF-8 text"),
    ("cut.parquet", b"PAR1 the rest never arrived", "cannot be read as preference data"),
    ("numbers.json", b"[1, 2, 3]", "row 1: expected a JSON object"),
    ("scalar.json", b"42", "got int at the top level"),
    ("list-lines.jsonl", b'["a", "b"]\n', "row 1: expected a JSON object"),
])
def test_every_malformed_file_shape_is_a_data_error_naming_the_file(tmp_path, tokenizer, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_preference_data(DataSettings(source=str(path)), tokenizer, max_length=64)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_a_damaged_saved_dataset_is_a_data_error(tmp_path, tokenizer):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_info.json").write_text("{")
    with pytest.raises(DataError, match="cannot be read as preference data"):
        load_preference_data(DataSettings(source=str(saved)), tokenizer, max_length=64)
