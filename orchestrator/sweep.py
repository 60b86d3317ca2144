"""One sweep, driver side: preflight, MLflow parent run, Tuner.fit, child-run status, analysis.

    dpo-sweep run                       # the built-in demo sweep (3 x 3 beta x learning_rate)
    dpo-sweep run my_sweep.yaml --address auto
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.analysis import SweepAnalysis, TrialRecord, analyze
from orchestrator.config import SweepConfig
from orchestrator.preflight import Preflight, run_preflight
from orchestrator.prepare import prepare_shared_reference, unsharable_keys
from orchestrator.tracking_sync import SyncCounts, log_analysis, sync_trial_runs
from trainables.config import TrialSpec, spec_with_params
from trainables.reference import SharedReference
from trainables.tracking import (
    EXPERIMENT_PATH_TAG,
    call_with_retries,
    ensure_experiment,
    flatten,
    is_local_uri,
    is_transient,
    make_client,
    redact_uri,
    start_sweep_run,
)

SWEEP_FILE = "dpo_sweep.json"  # beside Ray's results: what `resume`, `sync-mlflow` and `report` start from


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
    sync: SyncCounts | None = None


@dataclass
class SweepState:
    """A sweep's identity, written before the first trial starts: enough to resume it after the driver
    died, to rebuild its MLflow runs, or to regenerate its report, without the original command line."""

    name: str
    experiment_path: str
    tracking_uri: str  # redacted when it carried credentials: pass --tracking-uri again then
    experiment_id: str
    parent_run_id: str
    config: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self) -> None:
        write_text(join_path(self.experiment_path, SWEEP_FILE), self.to_json())

    @classmethod
    def load(cls, experiment_path: str) -> SweepState:
        path = join_path(experiment_path, SWEEP_FILE)
        try:
            raw = json.loads(read_text(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{experiment_path}: not a dpo-sweep experiment directory (no {SWEEP_FILE}); "
                                    "give the directory `dpo-sweep run` printed, under storage.path") from None
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})

    def sweep_config(self) -> SweepConfig:
        from orchestrator.config import validate_sweep_config

        return validate_sweep_config(self.config, source=join_path(self.experiment_path, SWEEP_FILE))


def join_path(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if "://" in base else str(Path(base) / name)


def _fs(path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


def write_text(path: str, text: str) -> None:
    if "://" not in path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        return
    fs, inner = _fs(path)
    with fs.open_output_stream(inner) as f:
        f.write(text.encode())


def read_text(path: str) -> str:
    if "://" not in path:
        return Path(path).read_text()
    fs, inner = _fs(path)
    try:
        with fs.open_input_stream(inner) as f:
            return f.read().decode()
    except OSError as e:
        raise FileNotFoundError(path) from e


def expected_reports(cfg: SweepConfig, params: dict[str, Any]) -> int:
    spec = TrialSpec.model_validate(spec_with_params(cfg.trial.model_dump(mode="json"), params))
    return spec.dpo.reports_per_epoch * spec.dpo.num_train_epochs


def records_from_results(grid, cfg: SweepConfig) -> list[TrialRecord]:
    """One record per trial. A step Ray holds twice (a trial resumed from a checkpoint older than its last
    result, after the driver died) counts once, the later run's value."""
    import pandas as pd

    records = []
    for result in grid:
        df = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
        if "step" in df and len(df):
            df = df.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)
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


def load_results(experiment_path: str):
    """Ray's results of a sweep, read from its directory: no cluster, nothing re-run."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    return ResultGrid(ExperimentAnalysis(experiment_path))


def analysis_dir(cfg: SweepConfig, state: SweepState) -> Path:
    """Analysis files are written locally: beside Ray's results, or under ./dpo-sweep-output for cloud storage."""
    if "://" not in cfg.storage.path:
        return Path(state.experiment_path) / "analysis"
    return Path.cwd() / "dpo-sweep-output" / state.name / "analysis"


def build_analysis(cfg: SweepConfig, state: SweepState, grid) -> tuple[list[TrialRecord], SweepAnalysis]:
    """Records, analysis files and the report, all local: they never wait on MLflow."""
    from orchestrator.report import write_report

    records = records_from_results(grid, cfg)
    out = analysis_dir(cfg, state)
    analysis = analyze(records, cfg.search.metric, cfg.search.mode, out, max_abs_logratio=cfg.analysis.max_abs_logratio)
    (out / SWEEP_FILE).write_text(state.to_json())  # a local copy, also when Ray's results are in the cloud
    analysis.reports = list(write_report(analysis, out, f"dpo-sweep: {state.name}", {
        "Ray results": state.experiment_path, "MLflow": f"{state.tracking_uri}, experiment {cfg.experiment!r}, "
        f"parent run {state.parent_run_id}", "regenerate": f"dpo-sweep report {state.experiment_path}"}))
    return records, analysis


def finish_sweep(cfg: SweepConfig, state: SweepState, grid, tracking_uri: str, log=print,
                 tracking_patience_s: float | None = None) -> tuple[list[TrialRecord], SweepAnalysis, SyncCounts | None]:
    """Records, analysis (written locally first: it never waits on MLflow), then MLflow brought up to date
    with Ray's results and the parent run closed. SyncCounts is None when MLflow stayed unreachable."""
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

    try:
        counts = call_with_retries(sync, "closing the sweep's runs", patience_s=patience, log=log)
    except Exception as e:
        if not is_transient(e):
            raise
        log(f"[sweep] MLflow still unreachable after {patience:.0f} s ({e}). Nothing is lost: Ray's results and "
            f"the analysis are in {state.experiment_path}. When the server is back: dpo-sweep sync-mlflow "
            f"{state.experiment_path}")
        return records, analysis, None
    log(f"[sweep] {counts.describe()}")
    return records, analysis, counts


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
              preflight: Preflight | None = None, worker_env: dict[str, str] | None = None,
              resume: SweepState | None = None, retry_failed: bool = False) -> SweepResult:
    """`worker_env`: variables every trial needs (MLflow credentials), passed by Ray's runtime env.
    `resume`: a sweep whose driver died - Ray's experiment is restored (finished trials kept, interrupted
    ones continued from their checkpoints, `retry_failed` also failed ones) and its MLflow parent run reused."""
    import ray

    from orchestrator.progress import ProgressPrinter
    from orchestrator.tuner import build_trainable, build_tuner
    from trainables.tune_entry import SweepContext

    cluster, nodes = None, 1
    if address:
        _start_ray(address, worker_env)
        cluster, nodes = cluster_view()
    pre = preflight or run_preflight(cfg, cluster, log=log, nodes=nodes)
    for note in pre.notes:
        log(f"[sweep] {note}")
    client = make_client(pre.tracking_uri)
    if resume:
        state = resume
        client.update_run(state.parent_run_id, status="RUNNING")
        log(f"[sweep] resuming {state.name}: MLflow run {state.parent_run_id} in experiment {cfg.experiment!r} "
            f"({redact_uri(pre.tracking_uri)}); Ray results {state.experiment_path}")
    else:
        state = _start_sweep(cfg, pre, client)
        log(f"[sweep] {state.name}: {pre.num_trials or cfg.search.num_samples} trial(s), MLflow run "
            f"{state.parent_run_id} in experiment {cfg.experiment!r} ({redact_uri(pre.tracking_uri)})")
    started = False
    try:
        started = _start_ray(address, worker_env)
        reference = _shared_reference(cfg, pre, address, log, client, state.parent_run_id)
        context = SweepContext(base_spec=cfg.trial.model_dump(mode="json"), tracking_uri=pre.tracking_uri,
                               experiment_id=state.experiment_id, parent_run_id=state.parent_run_id,
                               cpu_per_trial=cfg.resources.cpu_per_trial, tracking_flush_s=cfg.tracking.flush_s,
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
                       analysis=analysis, reference=reference, tracking_complete=counts is not None, sync=counts)


def _start_sweep(cfg: SweepConfig, pre: Preflight, client) -> SweepState:
    """MLflow experiment and parent run, and the state file beside Ray's results, before any trial."""
    name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    local_storage = "://" not in cfg.storage.path
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
    state = SweepState(name=name, experiment_path=experiment_path, tracking_uri=redact_uri(pre.tracking_uri),
                       experiment_id=experiment_id, parent_run_id=parent, config=public)
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
