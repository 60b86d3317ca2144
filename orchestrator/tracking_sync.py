"""The driver's MLflow: the experiment and the sweep's parent run, and MLflow made to agree with Ray's
results at the end of every sweep and in `dpo-sweep sync-mlflow`.

Ray's results (each trial's reports, persisted with its checkpoints) are the record of a sweep.
Trials log to MLflow as they go, but a tracking outage, a killed worker or a killed driver can
leave a child run short of steps, without its final status, or missing altogether. Syncing reads
Ray's results and adds what MLflow lacks - runs, steps, status tags, the best adapter - and
nothing it already has: it is idempotent, so running it twice changes nothing.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.analysis import SweepAnalysis
from orchestrator.records import COMPLETED, DIVERGED, FAILED, OUT_OF_MEMORY, TrialRecord
from trainables.params import trial_spec
from trainables.tracking import (
    EXPERIMENT_KIND_TAG,
    KIND_TAG,
    STATUS_TAG,
    SWEEP_TAG,
    find_trial_runs,
    log_params,
    log_step_metrics,
    open_trial_run,
    trial_run_fields,
)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "dpo_sweep_state.json", "trainer_state.json")
RUN_STATUS = {COMPLETED: "FINISHED", FAILED: "FAILED", DIVERGED: "FAILED", OUT_OF_MEMORY: "FAILED"}  # else KILLED
# Columns Ray adds to every result row; the rest are the trial's own metrics.
RAY_KEYS = frozenset({"training_iteration", "time_total_s", "episodes_total", "timesteps_total", "node_ip", "hostname",
                      "pid", "time_this_iter_s", "timestamp", "date", "time_since_restore", "timesteps_since_restore",
                      "iterations_since_restore", "checkpoint_dir_name", "done", "trial_id", "should_checkpoint"})


@dataclass
class SyncCounts:
    runs_created: int = 0
    steps_added: int = 0
    runs_checked: int = 0

    def describe(self) -> str:
        if not (self.runs_created or self.steps_added):
            return f"MLflow already had every step of all {self.runs_checked} trial run(s)"
        return (f"MLflow filled in from Ray's results: {self.runs_created} run(s) created, {self.steps_added} "
                f"missing step(s) added, over {self.runs_checked} trial run(s)")


def report_metrics(row: pd.Series) -> dict[str, Any]:
    """One history row as the trial reported it: numbers only, Ray's bookkeeping left out. NaN stands for
    'not in this report' except in a diverged report, where the NaN is the value."""
    diverged = row.get("diverged", 0) == 1
    out = {}
    for key, value in row.items():
        if key in RAY_KEYS or key.startswith("config/") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and (diverged or not math.isnan(value)):
            out[key] = value
    return out


def ensure_experiment(client, name: str, artifact_location: str | None = None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location,
                                    tags={EXPERIMENT_KIND_TAG[0]: EXPERIMENT_KIND_TAG[1]})


def start_sweep_run(client, experiment_id: str, sweep_name: str, params: dict[str, Any]) -> str:
    """The parent run, created by the driver before any trial starts."""
    run = client.create_run(experiment_id, run_name=sweep_name, tags={SWEEP_TAG: sweep_name, KIND_TAG: "sweep"})
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def sync_trial_runs(client, experiment_id: str, parent_run_id: str, records: list[TrialRecord],
                    base_spec: dict[str, Any]) -> SyncCounts:
    """Every trial's child run complete: created if missing, missing steps added, final status and the best
    checkpoint's adapter set. Safe to repeat."""
    counts = SyncCounts()
    runs = find_trial_runs(client, experiment_id, parent_run_id)
    for rec in records:
        counts.runs_checked += 1
        run = runs.get(rec.trial_id)
        if run is None:
            counts.runs_created += 1
            spec = trial_spec(base_spec, rec.params).model_dump(mode="json")
            last = rec.history.iloc[-1] if len(rec.history) else {}
            params, tags = trial_run_fields(spec, rec.params, node=last.get("node_id"),
                                            pid=int(last["pid"]) if "pid" in last else None)
            run_id = open_trial_run(client, experiment_id, parent_run_id, rec.trial_id, rec.trial_id,
                                    params=params, tags=tags)
            client.log_text(run_id, json.dumps(spec, indent=2), "trial_spec.json")
        else:
            run_id = run.info.run_id
        logged = {int(m.step) for m in client.get_metric_history(run_id, "step")}
        for _, row in rec.history.iterrows():
            step = int(row["step"])
            if step not in logged:
                log_step_metrics(client, run_id, report_metrics(row), step=step)
                counts.steps_added += 1
        client.set_tag(run_id, STATUS_TAG, rec.status)
        if rec.error:
            client.set_tag(run_id, "dpo_sweep.error", rec.error[:5000])
        if rec.best_checkpoint and Path(rec.best_checkpoint).is_dir() and not client.list_artifacts(
                run_id, "best_adapter"):
            with tempfile.TemporaryDirectory() as tmp:
                for name in ADAPTER_FILES:
                    src = Path(rec.best_checkpoint) / name
                    if src.is_file():
                        shutil.copy(src, tmp)
                client.log_artifacts(run_id, tmp, "best_adapter")
        client.set_terminated(run_id, RUN_STATUS.get(rec.status, "KILLED"))
    return counts


def plain(d: dict) -> dict:
    """A dict JSON can hold: numbers, text and None kept, anything else as its text."""
    return {k: (v if isinstance(v, (int, float, str)) or v is None else str(v)) for k, v in d.items()}


def log_analysis(client, run_id: str, analysis: SweepAnalysis) -> int:
    """The analysis files on the parent run (re-logging replaces them: artifacts are keyed by path); how many."""
    files = [p for p in [analysis.table_path, *analysis.plots.values(), *analysis.reports] if p]
    for path in files:
        client.log_artifact(run_id, str(path), "analysis")
    client.log_text(run_id, analysis.summary + "\n", "analysis/summary.txt")
    if analysis.cost:  # what the sweep cost, as metrics of its run (comparable across sweeps in the UI)
        log_step_metrics(client, run_id, analysis.cost.metrics(), step=0)
        client.set_tag(run_id, "dpo_sweep.cost", analysis.cost.describe()[:5000])
    if analysis.sweet_spot:  # the chosen cell, how it was chosen, and the runner-up
        spot = analysis.sweet_spot
        client.log_dict(run_id, {
            "metric": spot.metric, "mode": spot.mode, "values": plain(spot.values), "mean": spot.mean,
            "neighbourhood_score": spot.score, "trials_in_cell": spot.n, "se": spot.se,
            "runner_up": plain(spot.runner_up) if spot.runner_up else None, "runner_up_mean": spot.runner_up_mean,
            "confidence": spot.confidence, "win_rate": spot.win_rate,
            "compared_at": analysis.budget.describe if analysis.budget else None}, "analysis/sweet_spot.json")
    if analysis.best:  # the single trial whose adapter to take
        client.log_dict(run_id, plain(analysis.best), "analysis/best_trial.json")
    if analysis.best or analysis.sweet_spot:
        client.set_tag(run_id, "dpo_sweep.sweet_spot", analysis.sweet_spot_line[:5000])
    return len(files)
