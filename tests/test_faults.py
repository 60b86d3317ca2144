"""Faults injected for real, and the claim that nothing is lost and nothing duplicated checked.

- a trial's worker process killed by pid in the middle of training;
- the driver killed (SIGKILL) mid-sweep under halving, then `dpo-sweep resume` (tests/test_halving.py);
- the real `mlflow server` stopped mid-sweep and started again, with one trial driven to NaN by an
  exploding learning rate; then `dpo-sweep sync-mlflow` rebuilding every run in an empty store.

Each test adds a line of figures (faults, trials completed, metric points expected vs found in Ray's
results and in MLflow), printed in the 'figures' section at the end of the run.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import pytest
from conftest import MlflowServer
from observe import BIN, mlflow_children, mlflow_steps, ray_steps, run_cli, wait_until, write_sweep
from procs import kill_tree

from trainables.tracking import PID_TAG, STATUS_TAG

pytestmark = pytest.mark.slow


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
