"""Synchronous halving end to end: repeated, it stops the same trials and names the same sweet spot; its driver
killed mid-sweep, `dpo-sweep resume` ends where an uninterrupted sweep ends. Both compare against one
uninterrupted sweep of the same config, run once for the module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from conftest import small_sweep
from observe import (
    BIN,
    descendants,
    mlflow_children,
    mlflow_steps,
    outcome,
    ray_pids,
    ray_steps,
    run_cli,
    sqlite_steps_by_run,
    wait_until,
    write_sweep,
)
from procs import kill_tree

from orchestrator.config import validate_sweep_config
from orchestrator.records import COMPLETED
from orchestrator.sweep import run_sweep
from trainables.tracking import make_client

pytestmark = pytest.mark.slow

# A 2 x 2 grid, eta 2, two trials at a time (so arrival order at the rungs can vary): 4 trials to report 1,
# the best 2 to report 2, the best one to its 4th and last.
SPACE = {"beta": {"grid": [0.01, 0.5]}, "learning_rate": {"grid": [5e-5, 5e-3]}}
HALVING = {"trial": {"dpo": {"learning_rate": 5e-4, "num_train_epochs": 1}},
           "scheduler": {"kind": "halving", "grace_period": 1, "reduction_factor": 2},
           "resources": {"max_concurrent_trials": 2}}


def halving_config(model_cache: str, storage: Path):
    return validate_sweep_config(small_sweep(model_cache, storage, search={"space": SPACE}, **HALVING))


@pytest.fixture(scope="module")
def halving_sweep(model_cache, tmp_path_factory):
    """One uninterrupted sweep (a SweepResult): what a repeated or a resumed one must end like.

    Ray is told to wait 0 s for a reused worker's previous trial to end (its default is 2 s): each hand-over of a
    worker then depends on `hold_worker_for_cleanup`. Without it, trials failed at the hand-over and the halving
    sweep hung (seen in CI on a busy machine, where a trial's cleanup outlasted the 2 s)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", "0")  # the local Ray cluster's workers inherit it
        return run_sweep(halving_config(model_cache, tmp_path_factory.mktemp("halving")), log=lambda *_: None,
                         progress=False)


def test_synchronous_halving_stops_the_same_trials_and_finds_the_same_sweet_spot_every_time(halving_sweep,
                                                                                             model_cache, tmp_path):
    """Run again, arrival order at the rungs can differ, but synchronous halving decides only once every trial
    has reported at a rung, so both runs stop the same trials and name the same sweet spot."""
    from orchestrator.schedulers import halving_rungs

    def runs(result):
        return ({(r.params["beta"], r.params["learning_rate"]): (r.status, r.reports) for r in result.records},
                result.analysis.sweet_spot_line)

    again = run_sweep(halving_config(model_cache, tmp_path), log=lambda *_: None, progress=False)
    first, second = runs(halving_sweep), runs(again)
    assert first == second
    reports = sorted(n for _, n in first[0].values())
    assert halving_rungs(4, 1, 4, 2) == [(1, 4), (2, 2), (4, 1)]
    assert reports == [1, 1, 2, 4]
    assert sum(status == COMPLETED for status, _ in first[0].values()) == 1


def test_a_driver_killed_under_halving_resumes_to_the_same_stopped_set_and_sweet_spot(halving_sweep, model_cache,
                                                                                       tmp_path, figures):
    # The driver dies past the first rung (trials stopped there, a promoted trial mid-run, maybe others paused);
    # `resume` must re-run nothing that ended, continue the rest from checkpoints, reopen the same MLflow parent,
    # log every step once, and end where the module's uninterrupted halving sweep (the same config) ended.
    expected = outcome(Path(halving_sweep.experiment_path))
    assert "stopped_early" in expected[0].values()  # halving did stop trials: there is something to compare

    storage = tmp_path / "cut"
    sweep = write_sweep(tmp_path / "cut.yaml", model_cache, storage, "halvcut", SPACE, **HALVING)
    # Ray's driver copies its state (trial statuses, progress.csv) to the storage path every ~10 s or more; a
    # `resume` sees only that copy. At 1 s the copy keeps up with this short sweep, so the kill below lands on
    # a state past the first rung as `resume` will read it.
    proc = subprocess.Popen([str(BIN / "dpo-sweep"), "run", str(sweep)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    family: set[psutil.Process] = set()

    def past_the_first_rung() -> bool:
        """A promoted trial has reported beyond rung 1 (MLflow hears it first, from the trial itself), and Ray's
        copy in storage holds the rung-1 reports of at least 3 of the 4 trials: one of them was stopped there."""
        family.update(descendants(proc.pid))
        if not any(n >= 2 for n in sqlite_steps_by_run(storage / "mlflow.db").values()):
            return False
        try:
            copied = [steps for e in storage.glob("halvcut-*") for steps in ray_steps(e).values() if steps]
        except (ValueError, TypeError, KeyError):  # a progress.csv caught mid-copy: look again
            return False
        return len(copied) >= 3

    try:
        if wait_until(past_the_first_rung, proc, 400):
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_tree(*(p.pid for p in family if p.is_running()))
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before the driver could be killed"
    experiment = next(storage.glob("halvcut-*"))
    state = json.loads((experiment / "dpo_sweep.json").read_text())
    before = ray_steps(experiment)
    pids_before = {t: ray_pids(experiment, t) for t in before}
    resumed = run_cli("resume", str(experiment))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming {state['name']}" in resumed.stderr
    statuses, spot = outcome(experiment)
    assert statuses == expected[0]
    assert spot == expected[1]

    after = ray_steps(experiment)
    assert set(before) <= set(after) and len(after) == 4  # nothing disappeared
    unique = {t: sorted(set(s)) for t, s in after.items()}
    # A trial that reported nothing more after the resume was not run again: no new process wrote to its results.
    ended = [t for t in before if sorted(set(before[t])) == unique[t]]
    assert ended, f"no trial had ended when the driver was killed: before {before}, after {after}"
    assert all(after[t] == before[t] and ray_pids(experiment, t) == pids_before[t] for t in ended)
    # The one that went on continued from a checkpoint in a new process, not from its start.
    went_on = [t for t in before if t not in ended and before[t]]
    for t in went_on:
        pids = ray_pids(experiment, t)
        first_new = pids.index(pids[-1])
        assert pids[-1] not in pids_before[t] and after[t][first_new] > min(unique[t])

    db = f"sqlite:///{storage / 'mlflow.db'}"
    exp = make_client(db).get_experiment_by_name("halvcut")
    parents = make_client(db).search_runs([exp.experiment_id], "tags.`dpo_sweep.kind` = 'sweep'")
    assert [p.info.run_id for p in parents] == [state["parent_run_id"]]  # the same parent run, reopened
    assert parents[0].info.status == "FINISHED"
    children = mlflow_children(db, "halvcut")
    assert set(children) == set(after)
    logged = {t: mlflow_steps(db, run) for t, run in children.items()}
    assert logged == unique  # every step once: no gap, no duplicate
    repeats = sum(len(s) for s in after.values()) - sum(len(s) for s in unique.values())
    figures.append(
        f"driver SIGKILL under halving + resume: {len(ended)} trial(s) that had ended not re-run, {len(went_on)} "
        f"continued from a checkpoint; metric points in Ray {sum(len(s) for s in unique.values())} "
        f"(+{repeats} repeated report(s) collapsed by step), in MLflow {sum(len(s) for s in logged.values())}; "
        "same stopped set and sweet spot as the uninterrupted sweep")
