"""Reading a sweep from outside while it runs and after: its YAML written for `dpo-sweep run`, Ray's results,
the MLflow store (through the client, or straight from sqlite while the sweep writes), and its processes."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml
from conftest import merge, small_sweep

from trainables.tracking import PARENT_TAG, make_client

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


def outcome(experiment: Path) -> tuple[dict[str, str], str]:
    """({trial's params: status}, the sweet-spot line) from a finished sweep's analysis."""
    with open(experiment / "analysis" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    statuses = {f"beta={r['beta']},lr={r['learning_rate']}": r["status"] for r in rows}
    summary = (experiment / "analysis" / "report.md").read_text()
    spot = next(line for line in summary.splitlines() if "Sweet spot" in line)
    return statuses, spot
