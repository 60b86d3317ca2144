"""One sweep, driver side: preflight, MLflow parent run, Tuner.fit, child-run status, analysis.

    dpo-sweep run                       # the built-in demo sweep (3 x 3 beta x learning_rate)
    dpo-sweep run my_sweep.yaml --address auto
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.analysis import COMPLETED, DIVERGED, FAILED, SweepAnalysis, TrialRecord, analyze
from orchestrator.config import SweepConfig
from orchestrator.preflight import Preflight, run_preflight
from orchestrator.prepare import prepare_shared_reference, unsharable_keys
from trainables.config import TrialSpec, spec_with_params
from trainables.reference import SharedReference
from trainables.tracking import (
    STATUS_TAG,
    ensure_experiment,
    find_trial_runs,
    flatten,
    is_local_uri,
    make_client,
    open_trial_run,
    redact_uri,
    start_sweep_run,
)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "dpo_sweep_state.json", "trainer_state.json")
RUN_STATUS = {COMPLETED: "FINISHED", FAILED: "FAILED", DIVERGED: "FAILED"}  # the rest (stopped early) -> KILLED


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


def expected_reports(cfg: SweepConfig, params: dict[str, Any]) -> int:
    spec = TrialSpec.model_validate(spec_with_params(cfg.trial.model_dump(mode="json"), params))
    return spec.dpo.reports_per_epoch * spec.dpo.num_train_epochs


def records_from_results(grid, cfg: SweepConfig) -> list[TrialRecord]:
    import pandas as pd

    records = []
    for result in grid:
        df = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
        params = dict(result.config or {})
        trial_id = Path(result.path).name
        best = None
        if result.best_checkpoints:
            sign = 1 if cfg.search.mode == "max" else -1
            scored = [(c, m) for c, m in result.best_checkpoints if cfg.search.metric in m]
            if scored:
                best = max(scored, key=lambda cm: sign * cm[1][cfg.search.metric])[0].path
        records.append(TrialRecord(
            trial_id=trial_id, params=params, history=df, expected_reports=expected_reports(cfg, params),
            error=str(result.error) if result.error else None, best_checkpoint=best,
        ))
    return records


def finalize_trial_runs(client, experiment_id: str, parent_run_id: str, records: list[TrialRecord]) -> None:
    """Final status and the best checkpoint's adapter on every child run (the driver knows both)."""
    runs = find_trial_runs(client, experiment_id, parent_run_id)
    for rec in records:
        run = runs.get(rec.trial_id)
        run_id = run.info.run_id if run else open_trial_run(
            client, experiment_id, parent_run_id, rec.trial_id, rec.trial_id, params=rec.params, tags={})
        client.set_tag(run_id, STATUS_TAG, rec.status)
        if rec.error:
            client.set_tag(run_id, "dpo_sweep.error", rec.error[:5000])
        if rec.best_checkpoint and Path(rec.best_checkpoint).is_dir():
            with tempfile.TemporaryDirectory() as tmp:
                for name in ADAPTER_FILES:
                    src = Path(rec.best_checkpoint) / name
                    if src.is_file():
                        shutil.copy(src, tmp)
                client.log_artifacts(run_id, tmp, "best_adapter")
        client.set_terminated(run_id, RUN_STATUS.get(rec.status, "KILLED"))


def log_analysis(client, run_id: str, analysis: SweepAnalysis) -> None:
    for path in [analysis.table_path, *analysis.plots.values()]:
        if path:
            client.log_artifact(run_id, str(path), "analysis")
    client.log_text(run_id, analysis.summary + "\n", "analysis/summary.txt")
    if analysis.best:
        client.log_dict(run_id, {k: (v if isinstance(v, (int, float, str)) else str(v))
                                 for k, v in analysis.best.items()}, "analysis/sweet_spot.json")
        client.set_tag(run_id, "dpo_sweep.sweet_spot", analysis.summary.splitlines()[1][:5000])


def _quiet_tune_output() -> None:
    """dpo-sweep prints its own progress lines; Tune's would interleave with them. Set before fit()."""
    # Tune's new output engine prints a configuration box and a TensorBoard hint even at verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune warns on every checkpoint burst of short trials ("snapshotting ... may become a bottleneck");
    # with trials that report every few seconds that is the normal case, not a problem to act on.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def cluster_view() -> tuple[dict[str, float], int]:
    """(total resources, alive nodes) of the Ray cluster this process has joined."""
    import ray

    return ray.cluster_resources(), sum(1 for n in ray.nodes() if n.get("Alive"))


def _start_ray(address: str | None, env: dict[str, str] | None = None) -> bool:
    """Join `address` or start a local Ray; True when this process started (and must stop) it.
    `env` reaches every worker through the runtime env (trials on other nodes do not inherit the
    driver's environment): MLflow credentials travel this way, never through configs or params."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    common = {"log_to_driver": False, "logging_level": logging.WARNING}
    if env:
        common["runtime_env"] = {"env_vars": dict(env)}
    if address:
        ray.init(address=address, **common)
        return False
    # A local run binds nothing beyond 127.0.0.1 and needs no dashboard.
    ray.init(include_dashboard=False, **common)
    return True


def run_sweep(cfg: SweepConfig, address: str | None = None, log=print, progress: bool = True,
              preflight: Preflight | None = None, worker_env: dict[str, str] | None = None) -> SweepResult:
    """`worker_env`: variables every trial needs (MLflow credentials), passed by Ray's runtime env."""
    import ray

    from orchestrator.progress import ProgressPrinter
    from orchestrator.tuner import build_tuner
    from trainables.tune_entry import SweepContext

    cluster, nodes = None, 1
    if address:
        _start_ray(address, worker_env)
        cluster, nodes = cluster_view()
    pre = preflight or run_preflight(cfg, cluster, log=log, nodes=nodes)
    for note in pre.notes:
        log(f"[sweep] {note}")
    run_name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    client = make_client(pre.tracking_uri)
    local_storage = "://" not in cfg.storage.path
    artifact_location = (str(Path(cfg.storage.path) / "mlartifacts")
                         if local_storage and is_local_uri(pre.tracking_uri) else None)
    # The driver creates DB, experiment and parent run before any trial: a fresh sqlite DB opened
    # by several processes at once can corrupt.
    experiment_id = ensure_experiment(client, cfg.experiment, artifact_location)
    config_dict = cfg.model_dump(mode="json")
    config_dict["tracking"]["uri"] = redact_uri(pre.tracking_uri)
    parent = start_sweep_run(client, experiment_id, run_name, flatten(config_dict))
    client.log_text(parent, yaml.safe_dump(config_dict, sort_keys=False), "sweep_config.yaml")
    log(f"[sweep] {run_name}: {pre.num_trials or cfg.search.num_samples} trial(s), MLflow run {parent} "
        f"in experiment {cfg.experiment!r} ({redact_uri(pre.tracking_uri)})")
    started = False
    try:
        started = _start_ray(address, worker_env)
        reference = None
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
        context = SweepContext(base_spec=cfg.trial.model_dump(mode="json"), tracking_uri=pre.tracking_uri,
                               experiment_id=experiment_id, parent_run_id=parent,
                               cpu_per_trial=cfg.resources.cpu_per_trial,
                               shared_reference=str(reference.path) if reference else None)
        tuner = build_tuner(cfg, pre.param_space, context, run_name, pre.max_reports,
                            gpu_per_trial=pre.gpu_per_trial, callbacks=[ProgressPrinter(cfg.search.metric, pre.num_trials, enabled=progress)])
        _quiet_tune_output()
        grid = tuner.fit()
        records = records_from_results(grid, cfg)
        finalize_trial_runs(client, experiment_id, parent, records)
        # Analysis files are written locally: beside Ray's results, or under ./dpo-sweep-output for cloud storage.
        analysis_dir = (Path(grid.experiment_path) if local_storage
                        else Path.cwd() / "dpo-sweep-output" / run_name) / "analysis"
        analysis = analyze(records, cfg.search.metric, cfg.search.mode, analysis_dir,
                           max_abs_logratio=cfg.analysis.max_abs_logratio)
        log_analysis(client, parent, analysis)
        (analysis_dir / "sweep.json").write_text(json.dumps(
            {"name": run_name, "tracking_uri": redact_uri(pre.tracking_uri), "experiment_id": experiment_id,
             "parent_run_id": parent, "experiment_path": grid.experiment_path}, indent=2))
        client.set_terminated(parent, "FINISHED")
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    finally:
        if started:
            ray.shutdown()
    return SweepResult(name=run_name, experiment_path=grid.experiment_path, tracking_uri=pre.tracking_uri,
                       experiment_id=experiment_id, parent_run_id=parent, records=records, analysis=analysis,
                       reference=reference)
