"""Faults injected for real: a trial's worker process killed by pid in the middle of training."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from trainables.tracking import PARENT_TAG, PID_TAG, STATUS_TAG, make_client

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def child_run_state(db: Path) -> tuple[int | None, int]:
    """(worker pid, metric points logged) of the sweep's one child run, read straight from sqlite."""
    if not db.exists():
        return None, 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        try:
            pid = con.execute("select value from tags where key = ?", (PID_TAG,)).fetchone()
            points = con.execute("select count(*) from metrics where key = 'step'").fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet
            return None, 0
    return (int(pid[0]) if pid else None), points


def test_killed_trial_worker_resumes_from_its_checkpoint_with_nothing_lost(model_cache, tmp_path):
    storage = tmp_path / "out"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "faults",
        "trial": {"cache_dir": model_cache,
                  "data": {"source": "synthetic", "synthetic": {"num_train": 512, "num_eval": 64, "num_probe": 16}},
                  "dpo": {"num_train_epochs": 2, "reports_per_epoch": 4, "learning_rate": 5e-4}},
        "search": {"space": {"beta": {"grid": [0.1]}}},
        "scheduler": {"kind": "fifo"},
        "resources": {"max_failures": 1},
        "storage": {"path": str(storage)},
    }))
    proc = subprocess.Popen([str(BIN / "dpo-sweep"), "run", str(sweep)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    db = storage / "mlflow.db"
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        pid, points = child_run_state(db)
        if pid and points >= 2:  # two reports in: kill the trial's worker mid-training
            os.kill(pid, signal.SIGKILL)
            killed = pid
        time.sleep(0.2)
    out, err = proc.communicate(timeout=600)
    assert killed, f"never saw the trial report twice:\n{out[-2000:]}\n{err[-2000:]}"
    assert proc.returncode == 0, out[-3000:] + err[-3000:]

    expected_steps = [8, 16, 24, 32, 40, 48, 56, 64]  # 2 epochs x 4 reports of 32 steps each
    # Ray's results: every report once, in order, across the restart (a result and its checkpoint are
    # persisted together, so the restart starts right after the last result Ray has).
    progress = next(storage.glob("faults-*/*/progress.csv")).read_text().splitlines()
    header = progress[0].split(",")
    ray_steps = [int(float(line.split(",")[header.index("step")])) for line in progress[1:]]
    assert ray_steps == expected_steps

    client = make_client(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("faults")
    children = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` != ''")
    assert len(children) == 1  # continued, not duplicated
    run = children[0]
    assert run.data.tags[STATUS_TAG] == "completed" and run.info.status == "FINISHED"
    assert int(run.data.tags[PID_TAG]) != killed  # it finished in another process
    mlflow_steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")]
    assert sorted(mlflow_steps) == expected_steps  # no gap, no duplicate
    print(f"\nfaults injected: 1 (SIGKILL to pid {killed}); trials completed: 1/1; metric points expected "
          f"{len(expected_steps)}, in Ray {len(ray_steps)}, in MLflow {len(mlflow_steps)}")
