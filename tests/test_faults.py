"""Faults injected for real, and the claim that nothing is lost and nothing duplicated checked.

- a trial's worker process killed by pid in the middle of training;
- the driver killed (SIGKILL) mid-sweep, then `dpo-sweep resume`;
- the real `mlflow server` stopped mid-sweep and started again, with one trial driven to NaN by an
  exploding learning rate; then `dpo-sweep sync-mlflow` rebuilding every run in an empty store.

Each test adds a line of figures (faults, trials completed, metric points expected vs found in Ray's
results and in MLflow), printed in the 'figures' section at the end of the run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import MlflowServer, merge, small_sweep
from procs import kill_tree

from trainables.tracking import PARENT_TAG, PID_TAG, STATUS_TAG, make_client

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def write_sweep(path: Path, model_cache: str, storage: Path, name: str, space: dict, **sections) -> Path:
    """The small sweep, 2 epochs, one trial at a time, as a YAML file for `dpo-sweep run`."""
    raw = small_sweep(model_cache, storage, **merge({
        "name": name, "trial": {"dpo": {"num_train_epochs": 2, "learning_rate": 5e-4}}, "search": {"space": space},
        "scheduler": {"kind": "fifo"}, "resources": {"max_concurrent_trials": 1}}, sections))
    path.write_text(yaml.safe_dump(raw))
    return path


def ray_steps(experiment: Path) -> dict[str, list[int]]:
    """{trial id: steps in Ray's progress.csv, in file order, repeats kept}."""
    out = {}
    for csv_path in sorted(experiment.glob("*/progress.csv")):
        with open(csv_path) as f:
            out[csv_path.parent.name] = [int(float(r["step"])) for r in csv.DictReader(f)]
    return out


def ray_pids(experiment: Path, trial: str) -> list[str]:
    with open(experiment / trial / "progress.csv") as f:
        return [r["pid"] for r in csv.DictReader(f)]


def mlflow_children(uri: str, experiment: str) -> dict[str, object]:
    client = make_client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` != ''", max_results=1000)
    return {r.data.tags["dpo_sweep.trial_id"]: r for r in runs}


def mlflow_steps(uri: str, run) -> list[int]:
    return sorted(m.step for m in make_client(uri).get_metric_history(run.info.run_id, "step"))


def sqlite_steps_by_run(db: Path) -> dict[str, int]:
    """Distinct steps logged per run, read straight from sqlite (safe while the sweep writes): a trial that
    resumes from a pause may log its last report's step again, which must not count as a step further."""
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return dict(con.execute("select run_uuid, count(distinct value) from metrics where key = 'step' group by run_uuid"))
    except sqlite3.OperationalError:  # tables not created yet
        return {}


def wait_until(probe, proc: subprocess.Popen, seconds: float, every: float = 0.2):
    """The first truthy value of `probe()` (each read used once, never read twice), polled while `proc` runs;
    None if `proc` ended or `seconds` passed first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        value = probe()
        if value:
            return value
        time.sleep(every)
    return None


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dpo-sweep"), *args], check=False, capture_output=True, text=True,
                          timeout=timeout)


def test_killed_trial_worker_resumes_from_its_checkpoint_with_nothing_lost(model_cache, tmp_path, figures):
    storage = tmp_path / "out"
    sweep = write_sweep(tmp_path / "sweep.yaml", model_cache, storage, "faults", {"beta": {"grid": [0.1]}},
                        resources={"max_failures": 1, "cpu_per_trial": 1})
    proc = subprocess.Popen([str(BIN / "dpo-sweep"), "run", str(sweep)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    db = storage / "mlflow.db"

    def worker_after_two_reports() -> int | None:
        """The trial worker's pid once its run has two steps logged: one read of the store answers both."""
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            try:
                steps = con.execute("select count(*) from metrics where key = 'step'").fetchone()[0]
                row = con.execute("select value from tags where key = ?", (PID_TAG,)).fetchone()
            except sqlite3.OperationalError:  # tables not created yet
                return None
        return int(row[0]) if row and steps >= 2 else None

    killed = wait_until(lambda: db.exists() and worker_after_two_reports(), proc, 300)
    if killed:
        os.kill(killed, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert killed, f"never saw the trial report twice:\n{out[-2000:]}\n{err[-2000:]}"
    assert proc.returncode == 0, out[-3000:] + err[-3000:]

    expected = [4, 8, 12, 16, 20, 24, 28, 32]  # 2 epochs x 4 reports of 16 steps each
    experiment = next(storage.glob("faults-*"))
    (steps,) = ray_steps(experiment).values()
    # A result and its checkpoint are persisted together: the restart starts right after the last result.
    assert steps == expected
    (run,) = mlflow_children(f"sqlite:///{db}", "faults").values()  # continued, not duplicated
    assert run.data.tags[STATUS_TAG] == "completed" and run.info.status == "FINISHED"
    assert int(run.data.tags[PID_TAG]) != killed  # it finished in another process
    logged = mlflow_steps(f"sqlite:///{db}", run)
    assert logged == expected  # no gap, no duplicate
    figures.append(f"trial worker SIGKILL: faults 1; trials completed 1/1; metric points expected {len(expected)}, "
                   f"in Ray {len(steps)}, in MLflow {len(logged)}")


def test_mlflow_server_outage_and_a_nan_trial_lose_nothing(model_cache, tmp_path, figures):
    root = tmp_path / "mlflow"
    root.mkdir()
    server = MlflowServer(root).start()
    uri = server.uri
    storage = tmp_path / "out"
    # Learning rate 1e30 explodes the adapter: NaN held-out metrics at the first report, for real. A trial
    # that ends while the server is away waits only 2 s for its queued calls: the driver fills in the rest.
    sweep = write_sweep(tmp_path / "sweep.yaml", model_cache, storage, "outage",
                        {"learning_rate": {"grid": [5e-4, 1e-3, 1e30]}}, tracking={"uri": uri, "flush_s": 2})
    proc = subprocess.Popen([str(BIN / "dpo-sweep"), "run", str(sweep)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def reports() -> int:
        experiments = list(storage.glob("outage-*"))
        return sum(len(s) for s in ray_steps(experiments[0]).values()) if experiments else 0

    outage_s = rows_during_outage = 0
    try:
        rows_at_stop = wait_until(lambda: (n := reports()) >= 2 and n, proc, 300) or reports()
        server.stop()  # the tracking server goes away mid-training
        down_at = time.monotonic()
        # Down for 20 s at least, and training went on: four more reports while MLflow was away.
        rows = wait_until(lambda: (n := reports()) >= rows_at_stop + 4 and time.monotonic() - down_at >= 20 and n,
                          proc, 90, every=0.5) or reports()
        rows_during_outage = rows - rows_at_stop
        server.start()  # back, same store, same port
        outage_s = time.monotonic() - down_at
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
        server.stop()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert rows_during_outage >= 4, "training did not go on while the tracking server was down"

    experiment = next(storage.glob("outage-*"))
    steps = ray_steps(experiment)
    unique = {t: sorted(set(s)) for t, s in steps.items()}
    assert all(len(s) == len(unique[t]) for t, s in steps.items())

    server.start()
    try:
        children = mlflow_children(uri, "outage")
        statuses = sorted(run.data.tags[STATUS_TAG] for run in children.values())
        logged = {t: mlflow_steps(uri, run) for t, run in children.items()}
    finally:
        server.stop()
    assert statuses == ["completed", "completed", "diverged"]  # the sweep went on past the NaN trial
    assert set(logged) == set(unique) and all(logged[t] == unique[t] for t in unique)  # every step, once
    assert "Diverged" in out and "learning_rate=1e+30" in out
    expected = sum(len(s) for s in unique.values())
    filled = next((line for line in err.splitlines() if "MLflow" in line and "step" in line), "")
    figures.append(f"MLflow server down {outage_s:.0f} s mid-training ({rows_during_outage} reports meanwhile) + 1 "
                   f"NaN trial: faults 2; trials completed 2/3 + 1 diverged; metric points expected {expected}, in "
                   f"Ray {sum(len(s) for s in steps.values())}, in MLflow {sum(len(s) for s in logged.values())} "
                   f"({filled.removeprefix('[sweep] ')})")

    # The same sweep synced into an empty store: every run and step rebuilt from Ray's results, then idempotent.
    fresh = f"sqlite:///{tmp_path / 'rebuilt.db'}"
    first = run_cli("sync-mlflow", str(experiment), "--tracking-uri", fresh, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "3 run(s) created" in first.stdout
    rebuilt = mlflow_children(fresh, "outage")
    assert {t: mlflow_steps(fresh, run) for t, run in rebuilt.items()} == unique
    assert sorted(run.data.tags[STATUS_TAG] for run in rebuilt.values()) == statuses
    second = run_cli("sync-mlflow", str(experiment), "--tracking-uri", fresh, timeout=300)
    assert second.returncode == 0 and "already had every step" in second.stdout
    figures.append(f"sync-mlflow into an empty store: {len(rebuilt)} runs and {expected} metric points rebuilt from "
                   "Ray's results; a second sync added nothing")


def _outcome(experiment: Path) -> tuple[dict[str, str], str]:
    """({trial's params: status}, the sweet-spot line) from a finished sweep's analysis."""
    with open(experiment / "analysis" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    statuses = {f"beta={r['beta']},lr={r['learning_rate']}": r["status"] for r in rows}
    summary = (experiment / "analysis" / "report.md").read_text()
    spot = next(line for line in summary.splitlines() if "Sweet spot" in line)
    return statuses, spot


def test_a_driver_killed_under_halving_resumes_to_the_same_stopped_set_and_sweet_spot(model_cache, tmp_path,
                                                                                       figures):
    # The driver dies past the first rung (trials stopped there, one promoted trial mid-run, maybe others paused);
    # `resume` must re-run nothing that ended, continue the rest from checkpoints, reopen the same MLflow parent,
    # log every step once, and end where an uninterrupted sweep ends.
    space = {"beta": {"grid": [0.1, 0.5]}, "learning_rate": {"grid": [5e-4, 5e-3]}}
    halving = {"scheduler": {"kind": "halving", "grace_period": 1, "reduction_factor": 2},
               "trial": {"dpo": {"num_train_epochs": 1}}}
    whole = write_sweep(tmp_path / "whole.yaml", model_cache, tmp_path / "whole", "halvwhole", space, **halving)
    done = run_cli("run", str(whole))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = _outcome(next((tmp_path / "whole").glob("halvwhole-*")))
    assert "stopped_early" in expected[0].values()  # halving did stop trials: there is something to compare

    storage = tmp_path / "cut"
    sweep = write_sweep(tmp_path / "cut.yaml", model_cache, storage, "halvcut", space, **halving)
    proc = subprocess.Popen([str(BIN / "dpo-sweep"), "run", str(sweep)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    family: set[psutil.Process] = set()

    def past_the_first_rung() -> bool:  # a promoted trial has reported beyond rung 1
        family.update(descendants(proc.pid))
        return any(n >= 2 for n in sqlite_steps_by_run(storage / "mlflow.db").values())

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
    statuses, spot = _outcome(experiment)
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
