"""The sweep end to end: a real local Ray, real TRL on tiny-llama, a real sqlite MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import small_sweep

from orchestrator.config import validate_sweep_config
from orchestrator.records import COMPLETED, STOPPED
from orchestrator.sweep import run_sweep
from trainables.config import RewardHackingSettings
from trainables.tracking import FLAG_TAG, PARENT_TAG, STATUS_TAG, make_client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_ray():
    """One local Ray for the module's in-process sweeps: `run_sweep` joins a Ray already up and leaves it
    running, so each sweep here skips Ray's start and stop (~5 s each on 2 cores)."""
    import ray

    from orchestrator.cluster import start_ray

    started = start_ray(None)
    yield
    if started:
        ray.shutdown()


def sweep_config(model_cache, out, **sections):
    return validate_sweep_config(small_sweep(model_cache, out, **sections))


@pytest.fixture(scope="module")
def asha_sweep(model_cache, tmp_path_factory):
    """2 x 2: beta x learning_rate, where learning rate 1e-7 cannot learn and 5e-4 learns without degrading its
    generations (5e-3 would, and the guard would stop it). One trial at a time, so ASHA's rungs fill in a fixed
    order: the two learning trials first, then the two that must be stopped."""
    out = tmp_path_factory.mktemp("asha")
    cfg = sweep_config(model_cache, out,
                       search={"space": {"beta": {"grid": [0.1, 0.5]}, "learning_rate": {"grid": [5e-4, 1e-7]}}},
                       scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 2},
                       resources={"max_concurrent_trials": 1})
    result = run_sweep(cfg, log=lambda *_: None, progress=False)
    return cfg, result


def test_four_child_runs_nested_under_one_parent_with_params_metrics_status(asha_sweep, tmp_path):
    _cfg, result = asha_sweep
    client = make_client(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs([result.experiment_id], f"tags.`{PARENT_TAG}` = '{result.parent_run_id}'")
    assert len(children) == 4
    for run in children:
        assert {"dpo.beta", "dpo.learning_rate", "model.quantization", "lora.r"} <= run.data.params.keys()
        history = client.get_metric_history(run.info.run_id, "eval_rewards_accuracies")
        assert len(history) >= 1 and [m.step for m in history] == sorted(m.step for m in history)
        assert run.data.tags[STATUS_TAG] in (COMPLETED, STOPPED)
        assert run.info.status == ("FINISHED" if run.data.tags[STATUS_TAG] == COMPLETED else "KILLED")
    completed = [r for r in children if r.data.tags[STATUS_TAG] == COMPLETED]
    assert completed
    for run in completed:
        assert len(client.get_metric_history(run.info.run_id, "eval_rewards_accuracies")) == 4
        assert any(a.path == "best_adapter" for a in client.list_artifacts(run.info.run_id))
    parent_files = {a.path for a in client.list_artifacts(result.parent_run_id, "analysis")}
    assert {"analysis/results.csv", "analysis/interaction.png", "analysis/heatmap.png",
            "analysis/learning_curves.png"} <= parent_files
    spot = json.loads(Path(client.download_artifacts(result.parent_run_id, "analysis/sweet_spot.json",
                                                     str(tmp_path))).read_text())
    assert spot["values"] == result.analysis.sweet_spot.values and spot["compared_at"].startswith("compared at report")
    best = json.loads(Path(client.download_artifacts(result.parent_run_id, "analysis/best_trial.json",
                                                     str(tmp_path))).read_text())
    assert best["trial"] == result.analysis.best["trial"]


def test_results_table_and_best_trial(asha_sweep):
    _, result = asha_sweep
    table = result.analysis.table
    assert len(table) == 4 and set(table["trial"]) == {r.trial_id for r in result.records}
    done = table[table["status"] == COMPLETED]
    # The table compares trials at their common budget; the best single trial (whose adapter to take) is chosen
    # by its last value, kept beside it.
    assert result.analysis.best["eval_rewards_accuracies"] == done["final_eval_rewards_accuracies"].max()
    budget = result.analysis.budget
    assert (table["compared_report"] == budget.report).all() and budget.report <= budget.of
    for path in result.analysis.plots.values():
        assert path.is_file()


def test_report_regenerates_from_ray_results_and_lands_on_the_parent_run(asha_sweep):
    _, result = asha_sweep
    html_path = result.analysis.table_path.parent / "report.html"
    html_path.unlink()  # regenerated from Ray's results alone
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "report", result.experiment_path],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") >= 3 and "<h2>Recommendation</h2>" in page  # self-contained
    assert "Use beta" in page and "learning rate" in page
    md = (html_path.parent / "report.md").read_text()
    assert "## Recommendation" in md and "![heatmap](heatmap.png)" in md and "| trial |" in md
    client = make_client(result.tracking_uri)
    files = {a.path for a in client.list_artifacts(result.parent_run_id, "analysis")}
    assert {"analysis/report.html", "analysis/report.md", "analysis/main_effects.png"} <= files
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"


def test_asha_stops_the_corner_that_cannot_learn(asha_sweep):
    _, result = asha_sweep
    client = make_client(result.tracking_uri)
    runs = {r.data.params["dpo.learning_rate"]: r for r in client.search_runs(
        [result.experiment_id], f"tags.`{PARENT_TAG}` = '{result.parent_run_id}' and params.`dpo.beta` = '0.5'")}
    stuck = runs["1e-07"]
    assert stuck.data.tags[STATUS_TAG] == STOPPED and stuck.info.status == "KILLED"
    assert len(client.get_metric_history(stuck.info.run_id, "eval_rewards_accuracies")) < 4
    tiny = [r for r in result.records if r.params["learning_rate"] == 1e-7]
    assert all(r.status == STOPPED and r.reports < r.expected_reports for r in tiny)


def test_reward_hacking_flag_destroyed_trial_flagged_slow_one_not(model_cache, tmp_path):
    # 5e-2: ten times the demo's highest rate, which wrecks tiny-llama's answers within the first report.
    cfg = sweep_config(model_cache, tmp_path, scheduler={"kind": "fifo"},
                       search={"space": {"learning_rate": {"grid": [5e-2, 1e-6]}, "beta": 0.1}})
    result = run_sweep(cfg, log=lambda *_: None, progress=False)
    by_lr = {r.params["learning_rate"]: r for r in result.records}
    assert by_lr[5e-2].flagged and not by_lr[1e-6].flagged
    assert by_lr[1e-6].status == COMPLETED  # it ran all its reports; its answers never lost probability
    client = make_client(result.tracking_uri)
    tags = {r.data.params["dpo.learning_rate"]: r.data.tags for r in client.search_runs(
        [result.experiment_id], f"tags.`{PARENT_TAG}` = '{result.parent_run_id}'")}
    assert tags["0.05"][FLAG_TAG].startswith("flagged at step")
    assert FLAG_TAG not in tags["1e-06"]
    default = RewardHackingSettings().signals[0]  # the calibrated default
    assert tags["0.05"][FLAG_TAG].split(":")[0].endswith(f"by {default}")
    assert set(result.analysis.table["reward_hacking"]) == {default, ""}


def test_gpu_request_on_a_cpu_machine_is_refused_not_left_pending(model_cache, tmp_path, cluster_view, monkeypatch,
                                                                 capsys):
    from orchestrator.cli import main

    cluster_view(4)  # no GPU, whatever this machine has
    monkeypatch.setenv("DPO_SWEEP_CACHE", model_cache)
    code = main(["run", "--set", "resources.gpu_per_trial=1", "--set", f"storage.path={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "this machine has no GPU; Tune would leave every trial PENDING forever" in err and "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was created


def test_optuna_tpe_search_runs_sampled_trials(model_cache, tmp_path):
    pytest.importorskip("optuna")
    cfg = sweep_config(model_cache, tmp_path, scheduler={"kind": "fifo"},
                       search={"algorithm": "optuna", "num_samples": 3, "seed": 0,
                               "space": {"learning_rate": {"loguniform": [1e-4, 1e-3]}, "beta": {"grid": [0.1, 0.5]}}})
    result = run_sweep(cfg, log=lambda *_: None, progress=False)
    assert len(result.records) == 3
    for r in result.records:
        assert 1e-4 <= r.params["learning_rate"] <= 1e-3 and r.params["beta"] in (0.1, 0.5)
        assert r.status == COMPLETED


def test_a_second_sweep_with_the_same_key_reuses_the_shared_reference(model_cache, tmp_path):
    logs: list[str] = []
    first = run_sweep(sweep_config(model_cache, tmp_path, scheduler={"kind": "fifo"},
                                   search={"space": {"beta": {"grid": [0.1]}}}), log=logs.append, progress=False)
    second = run_sweep(sweep_config(model_cache, tmp_path, scheduler={"kind": "fifo"},
                                    search={"space": {"beta": {"grid": [0.3]}, "learning_rate": 1e-3}}),
                       log=logs.append, progress=False)
    assert first.reference.computed and not second.reference.computed
    assert first.reference.key == second.reference.key and first.reference.path == second.reference.path
    assert any("reused from an earlier sweep" in line for line in logs)
    client = make_client(second.tracking_uri)
    assert client.get_run(first.parent_run_id).data.tags["dpo_sweep.shared_reference"] == "computed"
    assert client.get_run(second.parent_run_id).data.tags["dpo_sweep.shared_reference"] == "reused"
    assert all(r.status == COMPLETED for r in first.records + second.records)

    # A space that varies what the key depends on cannot share one reference: each trial computes its own.
    third = run_sweep(sweep_config(model_cache, tmp_path, scheduler={"kind": "fifo"},
                                   search={"space": {"max_length": {"grid": [48]}}}), log=logs.append, progress=False)
    assert third.reference is None and any("shared reference off" in line for line in logs)
    assert third.records[0].status == COMPLETED


def test_the_sweeps_cost_sums_the_trials_own_clocks_and_its_savings_follow_the_steps(asha_sweep):
    from orchestrator.records import load_results

    _cfg, result = asha_sweep
    cost = result.analysis.cost
    last = [r.metrics for r in load_results(result.experiment_path)]
    # Each trial's own clock (from its worker's start for a worker's first trial), never less than Ray's.
    own_seconds = sum(m["time_trial_s"] for m in last)
    assert cost.trial_seconds == pytest.approx(own_seconds)
    assert own_seconds >= 0.9 * sum(m["time_total_s"] for m in last)  # the same trials, timed from inside
    assert cost.steps == sum(int(r.history["step"].iloc[-1]) for r in result.records)
    stopped = [r for r in result.records if r.status == STOPPED]
    assert stopped and cost.saved_steps > 0 and cost.full_steps == cost.steps + cost.saved_steps
    assert cost.tokens > 0 and "Cost:" in result.analysis.summary
    client = make_client(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.metrics["cost.trial_seconds"] == pytest.approx(own_seconds)
    assert parent.data.metrics["cost.saved_steps"] == cost.saved_steps
