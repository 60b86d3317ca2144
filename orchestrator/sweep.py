"""One sweep, driver side: preflight, MLflow parent run, Tuner.fit, child-run status, analysis.

    dpo-sweep run                       # the built-in demo sweep (3 x 3 beta x learning_rate)
    dpo-sweep run my_sweep.yaml --address auto
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from orchestrator.analysis import SweepAnalysis, analyze
from orchestrator.cluster import start_ray, view_for
from orchestrator.config import SweepConfig
from orchestrator.costs import sweep_cost
from orchestrator.preflight import Preflight, run_preflight
from orchestrator.prepare import builds_in_driver, prepare_shared_reference, unsharable_keys
from orchestrator.records import TrialRecord, records_from_results
from orchestrator.state import SWEEP_FILE, SweepState, is_uri, join_path, upload_dir
from orchestrator.tracking_sync import SyncCounts, ensure_experiment, log_analysis, start_sweep_run, sync_trial_runs
from trainables.reference import SharedReference
from trainables.tracking import (
    EXPERIMENT_PATH_TAG,
    call_with_retries,
    flatten,
    is_local_uri,
    is_transient,
    make_client,
    redact_uri,
)


@dataclass
class SweepResult:
    name: str
    experiment_path: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    records: list[TrialRecord]
    analysis: SweepAnalysis
    reference: SharedReference | None = None
    tracking_complete: bool = True  # False: MLflow was unreachable at the end; `dpo-sweep sync-mlflow` fills it in


def build_analysis(cfg: SweepConfig, state: SweepState, grid) -> tuple[list[TrialRecord], SweepAnalysis]:
    """Records, analysis files and the report, all local first: they never wait on MLflow. With results in
    the cloud, the files are then uploaded beside them (and stay in the local copy, which is printed)."""
    from orchestrator.report import write_report

    records = records_from_results(grid, cfg.trial.model_dump(mode="json"), cfg.search.metric, cfg.search.mode)
    out = state.analysis_dir()
    ref = state.reference or {}
    cost = sweep_cost(records, cfg.resources.cpu_per_trial, state.gpu_per_trial, reference_seconds=ref.get("seconds"),
                      reference_reused=not ref.get("computed", True))
    analysis = analyze(records, cfg.search.metric, cfg.search.mode, out, max_abs_logratio=cfg.analysis.max_abs_logratio,
                       cost=cost, tie_se=cfg.analysis.tie_se, tie_break=cfg.analysis.tie_break, swept=state.swept)
    (out / SWEEP_FILE).write_text(state.to_json())  # a copy of the state file, with the analysis
    analysis.reports = list(write_report(analysis, out, f"dpo-sweep: {state.name}", {
        "Ray results": state.experiment_path, "MLflow": f"{state.tracking_uri}, experiment {cfg.experiment!r}, "
        f"parent run {state.parent_run_id}", "regenerate": f"dpo-sweep report {state.experiment_path}"}))
    if is_uri(state.experiment_path):
        upload_dir(out, join_path(state.experiment_path, "analysis"))
    return records, analysis


def close_tracking(fn, what: str, state: SweepState, patience_s: float, log=print):
    """`fn()` against MLflow, retried for `patience_s`; when the server stays unreachable (or no longer has the
    sweep's run), None and the user told how to finish later. The one end of `run`, `resume`, `report` and
    `sync-mlflow`: nothing of Ray's results or the analysis waits on, or is lost with, MLflow."""
    try:
        return call_with_retries(fn, what, patience_s=patience_s, log=log)
    except Exception as e:
        missing = getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"
        if not (is_transient(e) or missing):
            raise
        why = "has no such run" if missing else f"still unreachable after {patience_s:.0f} s"
        log(f"[sweep] {what}: MLflow {why} ({e}). Nothing is lost: Ray's results and the analysis are in "
            f"{state.experiment_path}. When the server is back: dpo-sweep sync-mlflow {state.experiment_path}")
        return None


def finish_sweep(cfg: SweepConfig, state: SweepState, grid, tracking_uri: str, log=print,
                 tracking_patience_s: float | None = None) -> tuple[list[TrialRecord], SweepAnalysis, SyncCounts | None]:
    """Records and analysis, then MLflow brought up to date with Ray's results and the parent run closed.
    SyncCounts is None when MLflow stayed unreachable."""
    records, analysis = build_analysis(cfg, state, grid)
    client = make_client(tracking_uri)
    patience = cfg.tracking.patience_s if tracking_patience_s is None else tracking_patience_s

    def sync() -> SyncCounts:
        experiment_id = ensure_experiment(client, cfg.experiment, _artifact_location(cfg, tracking_uri))
        if experiment_id != state.experiment_id or not _run_exists(client, state.parent_run_id):
            # A different or rebuilt tracking server: a new parent run; the sweep now lives there.
            state.experiment_id, state.tracking_uri = experiment_id, redact_uri(tracking_uri)
            state.config["tracking"]["uri"] = redact_uri(tracking_uri)
            state.parent_run_id = start_sweep_run(client, experiment_id, state.name, flatten(_redacted(state.config)))
            state.save()
            log(f"[sweep] MLflow had no parent run for {state.name}: created {state.parent_run_id}")
        counts = sync_trial_runs(client, state.experiment_id, state.parent_run_id, records,
                                 cfg.trial.model_dump(mode="json"))
        log_analysis(client, state.parent_run_id, analysis)
        client.set_tag(state.parent_run_id, EXPERIMENT_PATH_TAG, state.experiment_path)
        client.set_terminated(state.parent_run_id, "FINISHED")
        return counts

    counts = close_tracking(sync, "closing the sweep's runs", state, patience, log=log)
    if counts is not None:
        log(f"[sweep] {counts.describe()}")
    return records, analysis, counts


def reopen_parent_run(client, state: SweepState, log=print) -> bool:
    """Mark a resumed sweep's parent run running again; False when MLflow is unreachable right now, which must
    not stop the resume: trials queue their logging, and the sweep's end brings MLflow up to date."""
    try:
        client.update_run(state.parent_run_id, status="RUNNING")
        return True
    except Exception as e:
        if not is_transient(e):
            raise
        log(f"[sweep] MLflow unreachable ({e}): the sweep goes on; trials queue their logging and the end of the "
            "sweep brings MLflow up to date")
        return False


def _artifact_location(cfg: SweepConfig, tracking_uri: str) -> str | None:
    """A local store keeps its artifacts beside Ray's results (MLflow's default is ./mlartifacts of the cwd)."""
    if "://" not in cfg.storage.path and is_local_uri(tracking_uri):
        return str(Path(cfg.storage.path).resolve() / "mlartifacts")
    return None


def _run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def _redacted(config: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(config))
    out["tracking"]["uri"] = redact_uri(out["tracking"].get("uri"))
    return out


def _quiet_tune_output() -> None:
    """dpo-sweep prints its own progress lines; Tune's would interleave with them. Set before fit()."""
    # Tune's new output engine prints a configuration box and a TensorBoard hint even at verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune warns on every checkpoint burst of short trials ("snapshotting ... may become a bottleneck");
    # with trials that report every few seconds that is the normal case, not a problem to act on.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def run_sweep(cfg: SweepConfig, address: str | None = None, log=print, progress: bool = True,
              preflight: Preflight | None = None, worker_env: dict[str, str] | None = None,
              resume: SweepState | None = None, retry_failed: bool = False) -> SweepResult:
    """`worker_env`: variables every trial needs (MLflow credentials), passed by Ray's runtime env.
    `resume`: a sweep whose driver died - Ray's experiment is restored (finished trials kept, interrupted
    ones continued from their checkpoints, `retry_failed` also failed ones) and its MLflow parent run reused."""
    import ray

    from orchestrator.progress import ProgressPrinter
    from orchestrator.tuner import build_trainable, build_tuner
    from trainables.tune_entry import SweepContext

    pre = preflight or run_preflight(cfg, view_for(address, worker_env), log=log)
    for note in pre.notes:
        log(f"[sweep] {note}")
    client = make_client(pre.tracking_uri)
    if resume:
        state = resume
        log(f"[sweep] resuming {state.name}: MLflow run {state.parent_run_id} in experiment {cfg.experiment!r} "
            f"({redact_uri(pre.tracking_uri)}); Ray results {state.experiment_path}")
        reopen_parent_run(client, state, log)
    else:
        state = _start_sweep(cfg, pre, client)
        log(f"[sweep] {state.name}: {pre.num_trials or cfg.search.num_samples} trial(s), MLflow run "
            f"{state.parent_run_id} in experiment {cfg.experiment!r} ({redact_uri(pre.tracking_uri)})")
    started = False
    try:
        # Built in this process (a local CPU sweep), the shared reference is prepared while Ray starts (seconds
        # of waiting on its processes), not after. Elsewhere the build is a Ray task, once Ray is up.
        prepare = partial(_shared_reference, cfg, pre, address, log, client, state.parent_run_id)
        with ThreadPoolExecutor(1) as pool:
            early = pool.submit(prepare) if builds_in_driver(pre.gpu_per_trial, local=not address) else None
            started = start_ray(address, worker_env)
            reference = early.result() if early else prepare()
        if reference and not (resume and state.reference):  # what it cost, for the sweep's cost accounting
            state.reference = {"key": reference.key, "seconds": round(reference.seconds, 3),
                               "computed": reference.computed}
            state.save()
        context = SweepContext(base_spec=cfg.trial.model_dump(mode="json"), tracking_uri=pre.tracking_uri,
                               experiment_id=state.experiment_id, parent_run_id=state.parent_run_id,
                               cpu_per_trial=cfg.resources.cpu_per_trial, tracking_flush_s=cfg.tracking.flush_s,
                               resident_model=cfg.resources.resident_model,
                               shared_reference=str(reference.path) if reference else None)
        _quiet_tune_output()
        from ray import tune

        # A driver that died before Tune wrote its state (while preparing the shared reference) left
        # nothing to restore: the sweep then starts its trials under the same name and parent run.
        if resume and tune.Tuner.can_restore(state.experiment_path):
            tuner = tune.Tuner.restore(state.experiment_path, build_trainable(cfg, context, pre.gpu_per_trial),
                                       resume_unfinished=True, resume_errored=retry_failed)
        else:
            printer = ProgressPrinter(cfg.search.metric, pre.num_trials, enabled=progress)
            tuner = build_tuner(cfg, pre.param_space, context, state.name, pre.max_reports,
                                num_trials=pre.num_trials or cfg.search.num_samples,
                                gpu_per_trial=pre.gpu_per_trial, callbacks=[printer], num_samples=pre.num_samples)
        grid = tuner.fit()
    except BaseException:
        # Ray's results and checkpoints stay: `dpo-sweep resume` continues from them.
        try:
            client.set_terminated(state.parent_run_id, "FAILED")
        except Exception as e:  # noqa: BLE001 - the tracking server may be what failed; resume reopens the run
            log(f"[sweep] MLflow run {state.parent_run_id} not marked failed: {e}")
        log(f"[sweep] stopped before the end; to continue: dpo-sweep resume {state.experiment_path}")
        raise
    finally:
        if started:
            ray.shutdown()
    records, analysis, counts = finish_sweep(cfg, state, grid, pre.tracking_uri, log=log)
    return SweepResult(name=state.name, experiment_path=state.experiment_path, tracking_uri=pre.tracking_uri,
                       experiment_id=state.experiment_id, parent_run_id=state.parent_run_id, records=records,
                       analysis=analysis, reference=reference, tracking_complete=counts is not None)


def _start_sweep(cfg: SweepConfig, pre: Preflight, client) -> SweepState:
    """MLflow experiment and parent run, and the state file beside Ray's results, before any trial."""
    name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    local_storage = not is_uri(cfg.storage.path)
    artifact_location = _artifact_location(cfg, pre.tracking_uri)
    # The driver creates DB, experiment and parent run before any trial: a fresh sqlite DB opened
    # by several processes at once can corrupt.
    experiment_id = ensure_experiment(client, cfg.experiment, artifact_location)
    config = cfg.model_dump(mode="json")
    config["tracking"]["uri"] = pre.tracking_uri
    public = _redacted(config)  # what is written anywhere: no credentials
    parent = start_sweep_run(client, experiment_id, name, flatten(public))
    client.log_text(parent, yaml.safe_dump(public, sort_keys=False), "sweep_config.yaml")
    experiment_path = join_path(cfg.storage.path if not local_storage else str(Path(cfg.storage.path).resolve()),
                                name)
    client.set_tag(parent, EXPERIMENT_PATH_TAG, experiment_path)
    if pre.dropped_rows:  # data.drop_invalid: what every trial trains without, on the sweep's run
        client.log_param(parent, "data.dropped_rows", sum(pre.dropped_rows.values()))
        client.set_tag(parent, "dpo_sweep.dropped_rows", ", ".join(f"{k} {v}" for k, v in pre.dropped_rows.items()))
    state = SweepState(name=name, experiment_path=experiment_path, tracking_uri=redact_uri(pre.tracking_uri),
                       experiment_id=experiment_id, parent_run_id=parent, config=public,
                       gpu_per_trial=pre.gpu_per_trial, swept=list(pre.param_space))
    state.save()
    return state


def _shared_reference(cfg: SweepConfig, pre: Preflight, address: str | None, log, client,
                      parent: str) -> SharedReference | None:
    blocking = unsharable_keys(pre.param_space)
    if cfg.shared_reference and "://" in cfg.storage.path:
        log(f"[sweep] shared reference off: storage.path {cfg.storage.path} is not a filesystem every node "
            "reads; give a shared filesystem path (NFS, a ReadWriteMany volume) to share it")
    elif cfg.shared_reference and blocking:
        log(f"[sweep] shared reference off: the space varies {', '.join(blocking)}, which change the "
            "token ids or reference log-probs; each trial computes its own")
    elif cfg.shared_reference:
        reference = prepare_shared_reference(cfg, pre.gpu_per_trial, local=not address)
        how = f"computed in {reference.seconds:.1f} s" if reference.computed else "reused from an earlier sweep"
        log(f"[sweep] tokenized data + reference log-probs {how}: {reference.path}")
        client.log_param(parent, "shared_reference.key", reference.key)
        client.set_tag(parent, "dpo_sweep.shared_reference", "computed" if reference.computed else "reused")
        return reference
    return None
