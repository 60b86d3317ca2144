"""Tracking that survives outages: the trial's queued logger and the driver's sync from Ray's results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient

from orchestrator.records import TrialRecord
from orchestrator.tracking_sync import ensure_experiment, report_metrics, start_sweep_run, sync_trial_runs
from trainables.config import TrialSpec
from trainables.tracking import (
    STATUS_TAG,
    TrialRunLogger,
    call_with_retries,
    find_trial_runs,
    is_transient,
    log_step_metrics,
    make_client,
    open_trial_run,
)


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = make_client(uri)
    exp = ensure_experiment(client, "t", str(tmp_path / "artifacts"))
    parent = start_sweep_run(client, exp, "sweep", {})
    return uri, client, exp, parent


def unreachable() -> MlflowException:
    return MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception "
                           "Max retries exceeded (Connection refused)")


def test_transient_and_permanent_errors_are_told_apart():
    assert is_transient(unreachable())
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(MlflowException("bad key", INVALID_PARAMETER_VALUE))
    assert not is_transient(TypeError("a bug is not an outage"))
    # A local file error is not an outage: retried for the whole patience it would only hide the message.
    assert not is_transient(FileNotFoundError(2, "No such file or directory", "/x/mlflow.db"))
    assert not is_transient(PermissionError(13, "Permission denied"))
    assert not is_transient(OSError(28, "No space left on device"))
    import requests

    assert is_transient(requests.exceptions.ConnectionError("connection refused"))
    assert is_transient(OSError(113, "No route to host"))


def test_logger_queues_through_an_outage_and_delivers_every_step_once(store, monkeypatch):
    uri, client, exp, parent = store
    real = MlflowClient.log_batch
    outage = {"left": 5}

    def flaky(self, run_id, *args, **kwargs):
        if outage["left"]:
            outage["left"] -= 1
            raise unreachable()
        return real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    messages = []
    logger = TrialRunLogger(uri, open_run=lambda c: open_trial_run(c, exp, parent, "t1", "t1", {}, {}),
                            retry_s=0.01, log=messages.append)
    for step in (4, 8, 8, 12):  # 8 twice: a restarted trial repeating a step
        logger.log_metrics({"step": step, "eval_loss": 1.0 / step}, step=step)
    logger.set_tag("k", "v")
    assert logger.close(timeout=30) == 0
    history = client.get_metric_history(logger.run_id, "eval_loss")
    assert sorted(m.step for m in history) == [4, 8, 12]
    assert client.get_run(logger.run_id).data.tags["k"] == "v"
    assert logger.outages == 1
    assert any("unreachable" in m for m in messages) and any("back after" in m for m in messages)


def test_logger_reports_what_it_could_not_deliver_and_drops_what_mlflow_refuses(store, monkeypatch):
    uri, _, exp, parent = store
    messages = []
    refused = TrialRunLogger(uri, open_run=lambda c: open_trial_run(c, exp, parent, "t2", "t2", {}, {}),
                             retry_s=0.01, log=messages.append)
    refused.set_tag("x" * 300, "too long a key")  # MLflow refuses it: reported, not retried forever
    refused.log_metrics({"step": 1}, step=1)
    assert refused.close(timeout=30) == 0
    assert any("refused" in m for m in messages)

    monkeypatch.setattr(MlflowClient, "log_batch", lambda *a, **k: (_ for _ in ()).throw(unreachable()))
    down = TrialRunLogger(uri, open_run=lambda c: open_trial_run(c, exp, parent, "t3", "t3", {}, {}),
                          retry_s=0.01, log=messages.append)
    down.log_metrics({"step": 1}, step=1)
    down.log_metrics({"step": 2}, step=2)
    assert down.close(timeout=0.5) == 2  # counted, for the driver's sync to fill in


def test_call_with_retries_waits_out_a_short_outage_and_gives_up_on_a_long_one():
    calls = {"n": 0}

    def recovers():
        calls["n"] += 1
        if calls["n"] < 3:
            raise unreachable()
        return "ok"

    assert call_with_retries(recovers, "x", patience_s=5, log=lambda *_: None, retry_s=0.01) == "ok"
    with pytest.raises(MlflowException):
        call_with_retries(lambda: (_ for _ in ()).throw(unreachable()), "x", patience_s=0.05, log=lambda *_: None,
                          retry_s=0.01)


def record(trial_id: str, steps: list[int], **kw) -> TrialRecord:
    history = pd.DataFrame({"step": steps, "eval_loss": [1.0 / s for s in steps], "training_iteration": range(
        1, len(steps) + 1), "time_total_s": 1.0, "config/beta": 0.1})
    return TrialRecord(trial_id=trial_id, params={"beta": 0.1}, history=history, expected_reports=len(steps), **kw)


def test_sync_fills_missing_runs_and_steps_from_ray_results_and_is_idempotent(store):
    _, client, exp, parent = store
    base = TrialSpec().model_dump(mode="json")
    partial = open_trial_run(client, exp, parent, "a", "a", {}, {})
    log_step_metrics(client, partial, {"step": 4, "eval_loss": 0.25}, step=4)  # then MLflow went away
    records = [record("a", [4, 8, 12]), record("b", [4, 8, 12]), record("c", [4], error="boom")]

    counts = sync_trial_runs(client, exp, parent, records, base)
    assert (counts.runs_created, counts.steps_added) == (2, 6)  # a: 8, 12; b: 4, 8, 12; c: 4
    runs = find_trial_runs(client, exp, parent)
    assert set(runs) == {"a", "b", "c"}
    for trial_id, run in runs.items():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")]
        assert sorted(steps) == ([4] if trial_id == "c" else [4, 8, 12])
    assert runs["b"].data.params["dpo.beta"] == "0.1"  # created runs carry the trial's full config
    assert "time_total_s" not in runs["b"].data.metrics and "config/beta" not in runs["b"].data.metrics
    assert runs["c"].data.tags[STATUS_TAG] == "failed" and runs["c"].info.status == "FAILED"
    assert runs["b"].info.status == "FINISHED"

    again = sync_trial_runs(client, exp, parent, records, base)
    assert (again.runs_created, again.steps_added) == (0, 0)
    assert "already had every step" in again.describe()


def test_report_metrics_keep_a_diverged_reports_nan_and_drop_missing_values():
    row = pd.Series({"step": 8, "eval_loss": float("nan"), "diverged": 1, "timestamp": 5})
    assert set(report_metrics(row)) == {"step", "eval_loss", "diverged"}
    row = pd.Series({"step": 8, "eval_loss": 0.5, "train_loss": float("nan"), "diverged": 0})
    assert set(report_metrics(row)) == {"step", "eval_loss", "diverged"}


def test_runs_created_by_sync_carry_what_a_trial_run_carries(store):
    """Node, pid, swept keys and trial_spec.json, from Ray's results: a run rebuilt by sync-mlflow reads like one
    the trial opened itself."""
    from trainables.tracking import NODE_TAG, PID_TAG, SWEPT_TAG

    _, client, exp, parent = store
    rec = record("n", [4, 8])
    rec.history["node_id"], rec.history["pid"] = "node-abc", 4242
    sync_trial_runs(client, exp, parent, [rec], TrialSpec().model_dump(mode="json"))
    run = find_trial_runs(client, exp, parent)["n"]
    tags = run.data.tags
    assert (tags[NODE_TAG], tags[PID_TAG], tags[SWEPT_TAG], tags["swept.beta"]) == ("node-abc", "4242", "beta", "0.1")
    spec = client.download_artifacts(run.info.run_id, "trial_spec.json")
    assert '"beta": 0.1' in Path(spec).read_text()


def test_a_step_repeated_after_a_restart_keeps_its_first_value_in_mlflow_and_in_the_analysis(store):
    """A trial restarted from a checkpoint older than its last result reports a step twice. MLflow keeps the first
    (the trial's logger logs each step once), and so do the records the analysis reads: the two agree."""
    from types import SimpleNamespace

    from orchestrator.records import records_from_results

    _, client, exp, parent = store
    history = pd.DataFrame({"step": [4, 8, 8, 12], "eval_rewards_accuracies": [0.5, 0.6, 0.7, 0.8]})
    result = SimpleNamespace(metrics_dataframe=history, config={"beta": 0.1}, path="/x/trial_r", error=None,
                             best_checkpoints=[])
    base = TrialSpec().model_dump(mode="json")
    (rec,) = records_from_results([result], base, "eval_rewards_accuracies", "max")
    assert rec.history["step"].tolist() == [4, 8, 12] and rec.history["eval_rewards_accuracies"].tolist() == [0.5, 0.6, 0.8]

    logger = TrialRunLogger(store[0], open_run=lambda c: open_trial_run(c, exp, parent, "trial_r", "r", {}, {}),
                            retry_s=0.01, log=lambda *_: None)
    for _, row in history.iterrows():  # what the trial sent, the repeat included
        logger.log_metrics(row.to_dict(), step=int(row["step"]))
    assert logger.close(timeout=30) == 0
    sync_trial_runs(client, exp, parent, [rec], base)
    logged = {m.step: m.value for m in client.get_metric_history(logger.run_id, "eval_rewards_accuracies")}
    assert logged == dict(zip(rec.history["step"], rec.history["eval_rewards_accuracies"], strict=True))


def test_tables_are_appended_per_report_and_one_mlflow_cannot_write_does_not_hold_up_the_metrics(
        store, monkeypatch):
    import json

    from mlflow.exceptions import MlflowException

    uri, client, exp, parent = store
    messages = []
    logger = TrialRunLogger(uri, open_run=lambda c: open_trial_run(c, exp, parent, "t4", "t4", {}, {}),
                            retry_s=0.01, log=messages.append)
    rows = [{"step": 4, "prompt": "p", "reference": "r", "policy": "x", "reward_a": None}]
    logger.log_table(rows, "completions.json", step=4)
    logger.log_table([{**rows[0], "step": 8, "reward_a": 1.0}], "completions.json", step=8)
    logger.log_table(rows, "completions.json", step=4)  # a repeated report: not appended twice
    real = MlflowClient.log_table

    def broken(self, run_id, data, artifact_file):
        if data["step"][0] == 12:
            raise MlflowException("Failed to save the table as the data is not JSON serializable")
        return real(self, run_id, data=data, artifact_file=artifact_file)

    monkeypatch.setattr(MlflowClient, "log_table", broken)
    logger.log_table([{**rows[0], "step": 12}], "completions.json", step=12)
    logger.log_metrics({"step": 12, "eval_loss": 0.5}, step=12)
    assert logger.close(timeout=30) == 0
    assert [m.step for m in client.get_metric_history(logger.run_id, "eval_loss")] == [12]
    assert any("dropped a table call" in m for m in messages)
    table = json.loads(Path(client.download_artifacts(logger.run_id, "completions.json")).read_text())
    assert [r[table["columns"].index("step")] for r in table["data"]] == [4, 8]
