"""MLflow: the one module that opens runs, for the driver (the sweep's parent run) and the trials
(nested child runs). Everything goes through an explicit `MlflowClient` and run ids, never the
fluent API's process-global active run, so a worker can never end the parent by accident.

Nesting is the `mlflow.parentRunId` tag, which the UI groups by. A trial's child run is found by
its Ray trial id, so a restarted trial continues its run instead of opening a second one.

    mlflow ui --backend-store-uri sqlite:////abs/path/mlflow.db     # read a local sweep
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "dpo_sweep.sweep"
KIND_TAG = "dpo_sweep.kind"
TRIAL_ID_TAG = "dpo_sweep.trial_id"
STATUS_TAG = "dpo_sweep.status"
FLAG_TAG = "dpo_sweep.reward_hacking"
NODE_TAG = "dpo_sweep.node_id"  # the Ray node a trial (last) ran on
PID_TAG = "dpo_sweep.worker_pid"  # the process running it there (to find, or stop, a stuck trial)
# Opens experiments in the classic training-runs view rather than the GenAI one.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")


def default_tracking_uri(base_dir: str | Path) -> str:
    return f"sqlite:///{Path(base_dir).resolve() / 'mlflow.db'}"


CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def redact_uri(uri: str | None) -> str | None:
    """'https://user:secret@host' -> 'https://***@host': URIs are logged; credentials never are."""
    if not uri or "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    userinfo, _, host = rest.rpartition("@")
    return f"{scheme}://***@{host}" if userinfo and "/" not in userinfo else uri


def is_local_uri(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/", ".")) or "://" not in uri


def make_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client, name: str, artifact_location: str | None = None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location,
                                    tags={EXPERIMENT_KIND_TAG[0]: EXPERIMENT_KIND_TAG[1]})


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])


def start_sweep_run(client, experiment_id: str, sweep_name: str, params: dict[str, Any]) -> str:
    """The parent run, created by the driver before any trial starts."""
    run = client.create_run(experiment_id, run_name=sweep_name, tags={SWEEP_TAG: sweep_name, KIND_TAG: "sweep"})
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def open_trial_run(client, experiment_id: str, parent_run_id: str, trial_id: str, trial_name: str,
                   params: dict[str, Any], tags: dict[str, str]) -> str:
    """The trial's child run: found by trial id if it exists (a restarted trial), else created."""
    found = client.search_runs(
        [experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
        max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        for key, value in tags.items():  # e.g. the node it runs on now
            client.set_tag(run_id, key, value)
        return run_id
    run = client.create_run(experiment_id, run_name=trial_name,
                            tags={PARENT_TAG: parent_run_id, TRIAL_ID_TAG: trial_id, KIND_TAG: "trial",
                                  STATUS_TAG: "running", **tags})
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_step_metrics(client, run_id: str, metrics: dict[str, Any], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


def find_trial_runs(client, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
    """{trial id: run} of a sweep's children."""
    runs = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=10000)
    return {r.data.tags.get(TRIAL_ID_TAG): r for r in runs}
