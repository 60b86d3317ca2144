"""A sweep's state file and storage: damaged files refused by name, resume through an MLflow outage, and
the analysis of a sweep whose results live at a storage URI."""

from __future__ import annotations

import json

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

from orchestrator.state import SWEEP_FILE, SweepNotFound, SweepState, find_experiment
from orchestrator.sweep import build_analysis, reopen_parent_run
from trainables.config import ConfigError

GOOD = {"name": "s-1", "experiment_path": "/x", "tracking_uri": "sqlite:////x/m.db", "experiment_id": "1",
        "parent_run_id": "abc", "config": {"name": "s"}}


@pytest.mark.parametrize(("text", "needle"), [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "parent_run_id"}), "missing parent_run_id"),
    (json.dumps({**GOOD, "config": 3}), "config: expected a mapping"),
])
def test_a_damaged_state_file_is_refused_naming_the_file_and_the_fault(tmp_path, text, needle):
    (tmp_path / SWEEP_FILE).write_text(text)
    with pytest.raises(ConfigError) as err:
        SweepState.load(str(tmp_path))
    assert needle in str(err.value) and str(tmp_path / SWEEP_FILE) in str(err.value)


def test_a_directory_without_a_state_file_is_no_sweep(tmp_path):
    with pytest.raises(SweepNotFound, match="not a dpo-sweep experiment directory"):
        SweepState.load(str(tmp_path))
    with pytest.raises(SweepNotFound, match="latest there: none"):
        find_experiment("nope", str(tmp_path), log=None)


def test_lookup_by_name_skips_a_damaged_state_file_elsewhere(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / SWEEP_FILE).write_text("{")
    (tmp_path / "s-1").mkdir()
    (tmp_path / "s-1" / SWEEP_FILE).write_text(json.dumps(GOOD))
    assert find_experiment("s", str(tmp_path), log=lambda *_: None) == str((tmp_path / "s-1").resolve())


def test_resume_goes_on_while_mlflow_is_unreachable():
    class Down:
        def update_run(self, *a, **k):
            raise MlflowException("API request to http://127.0.0.1:5000 failed (Connection refused)")

    class Refuses:
        def update_run(self, *a, **k):
            raise MlflowException("not allowed", error_code=PERMISSION_DENIED)

    said = []
    assert reopen_parent_run(Down(), SweepState(**GOOD), log=said.append) is False
    assert "the sweep goes on" in said[0]
    with pytest.raises(MlflowException):  # a refusal is not an outage
        reopen_parent_run(Refuses(), SweepState(**GOOD), log=said.append)


def test_with_results_at_a_storage_uri_the_analysis_is_cached_locally_and_uploaded_beside_them(
        tmp_path, monkeypatch, make_sweep):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DPO_SWEEP_CACHE", str(tmp_path / "cache"))
    remote = tmp_path / "bucket" / "s-1"
    state = SweepState(**{**GOOD, "experiment_path": f"file://{remote}"})
    assert state.analysis_dir() == tmp_path / "cache" / "sweeps" / "s-1" / "analysis"
    _, analysis = build_analysis(make_sweep(), state, grid=[])
    assert analysis.table_path.parent == state.analysis_dir()
    assert (remote / "analysis" / "results.csv").is_file() and (remote / "analysis" / "report.html").is_file()
    assert not (tmp_path / "dpo-sweep-output").exists()  # nothing lands in the working directory
