"""MLflow for trials: the tags every run carries, a trial's nested child run, and the queued logger
that never holds training up. (The driver's own MLflow work - the experiment, the parent run, bringing
MLflow up to date with Ray's results - is `orchestrator.tracking_sync`.) Everything goes through an explicit `MlflowClient` and run ids, never the
fluent API's process-global active run, so a worker can never end the parent by accident.

Nesting is the `mlflow.parentRunId` tag, which the UI groups by. A trial's child run is found by
its Ray trial id, so a restarted trial continues its run instead of opening a second one.

    mlflow ui --backend-store-uri sqlite:////abs/path/mlflow.db     # read a local sweep
"""

from __future__ import annotations

import errno
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
EXPERIMENT_PATH_TAG = "dpo_sweep.experiment_path"  # on the parent: Ray's results, for resume / sync-mlflow
PID_TAG = "dpo_sweep.worker_pid"  # the process running it there (to find, or stop, a stuck trial)
SWEPT_TAG = "dpo_sweep.swept"  # the keys the search space set, comma-separated; each value is tag swept.<key>
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


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])


def trial_run_fields(spec: dict[str, Any], params: dict[str, Any], node: str | None = None,
                     pid: int | str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(params, tags) of a trial's child run, whoever creates it (the trial, or the driver's sync): the trial
    config flattened (`spec`: TrialSpec.model_dump(mode="json")), the swept keys and values, and where it ran."""
    run_params = flatten({k: v for k, v in spec.items() if k not in ("output_dir", "cache_dir")})
    tags = {SWEPT_TAG: ",".join(sorted(params)), **{f"swept.{k}": str(v) for k, v in params.items()}}
    if node:
        tags[NODE_TAG] = str(node)
    if pid is not None:
        tags[PID_TAG] = str(pid)
    return run_params, tags


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
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def step_metrics(metrics: dict[str, Any], step: int) -> list:
    """The numbers of one report as MLflow metric rows of `step`, all with one timestamp (taken now): a
    batch sent twice is the same rows, which the store keeps once."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


def log_metric_rows(client, run_id: str, items: list) -> None:
    for i in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=items[i : i + 1000])


def log_step_metrics(client, run_id: str, metrics: dict[str, Any], step: int) -> None:
    log_metric_rows(client, run_id, step_metrics(metrics, step))


def find_trial_runs(client, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
    """{trial id: run} of a sweep's children."""
    runs = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=10000)
    return {r.data.tags.get(TRIAL_ID_TAG): r for r in runs}


# MLflow error codes that retrying cannot fix: the call itself is wrong.
PERMANENT_ERRORS = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                              "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_STATE"})


# What a network failure looks like from below MLflow: refused, reset, unreachable, timed out.
NETWORK_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH,
                            errno.ENETUNREACH, errno.ENETDOWN, errno.ETIMEDOUT, errno.EPIPE})


def is_transient(exc: BaseException) -> bool:
    """A tracking failure worth retrying: server down or restarting, the network, a busy sqlite file. A local
    file error (missing, no permission, a full disk) is not: retrying it only delays the message."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import Timeout

    if isinstance(exc, MlflowException):
        # log_table wraps any failure to write the table's file as 'Failed to save ...': the data, not the network.
        return exc.error_code not in PERMANENT_ERRORS and not str(exc).startswith("Failed to save")
    if isinstance(exc, (ConnectionError, TimeoutError, RequestsConnectionError, Timeout)):
        return True
    if isinstance(exc, OSError):
        return exc.errno in NETWORK_ERRNOS
    return type(exc).__name__ in ("OperationalError", "DBAPIError")


def call_with_retries(fn, what: str, patience_s: float, log=print, retry_s: float = 5.0):
    """`fn()`, retried on transient tracking failures for up to `patience_s` seconds (then re-raised)."""
    deadline = time.monotonic() + patience_s
    warned = False
    while True:
        try:
            return fn()
        except Exception as e:
            if not is_transient(e) or time.monotonic() + retry_s > deadline:
                raise
            if not warned:
                log(f"[mlflow] {what}: tracking server unreachable ({_short(e)}); retrying every {retry_s:g} s "
                    f"for up to {patience_s:.0f} s")
                warned = True
            time.sleep(retry_s)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) < 160 else text[:157] + "..."


class TrialRunLogger:
    """A trial's MLflow logging that never holds training up.

    Calls are queued in order and sent by one background thread. While the tracking server is
    unreachable the thread retries every `retry_s` seconds and the queue grows; training goes on
    and nothing is dropped. The child run is opened (or found again, for a restarted trial) by the
    same thread, so a trial can even start while the server is down. Metrics are idempotent by
    step: a step the run already has is not logged twice.

    What is still queued when `close(timeout)` gives up is counted and left to the driver, which
    fills every run in from Ray's results at the end of the sweep (and `dpo-sweep sync-mlflow`).
    """

    def __init__(self, uri: str, open_run, retry_s: float = 2.0, log=print):
        import collections
        import threading

        self._uri, self._open_run, self._retry_s, self._log = uri, open_run, retry_s, log
        self._ops: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closing = self._abandoned = False
        self.run_id: str | None = None
        self.outages = 0
        self._steps: set[int] = set()
        self._tables: set[tuple[str, int]] = set()
        self._thread = threading.Thread(target=self._loop, name="mlflow-trial-logger", daemon=True)
        self._thread.start()

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        self._put(("metrics", step, step_metrics(metrics, step)))

    def set_tag(self, key: str, value: str) -> None:
        self._put(("tag", key, value))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._put(("text", text, artifact_file))

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str, step: int) -> None:
        """Rows appended to the run's table `artifact_file` (MLflow's UI shows it under Evaluation / Artifacts);
        one report's rows once per trial process."""
        self._put(("table", rows, artifact_file, step))

    def _put(self, op) -> None:
        with self._cv:
            self._ops.append(op)
            self._cv.notify()

    def close(self, timeout: float) -> int:
        """Wait up to `timeout` s for the queue to drain; the number of calls not delivered."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout)
        with self._cv:
            self._abandoned = True  # a reused worker process must not keep retrying for a finished trial
            self._cv.notify()
        return len(self._ops)

    def _apply(self, client, op) -> None:
        kind = op[0]
        if kind == "metrics":
            _, step, items = op
            if step in self._steps:
                return
            log_metric_rows(client, self.run_id, items)
            self._steps.add(step)
        elif kind == "tag":
            client.set_tag(self.run_id, op[1], op[2])
        elif kind == "text":
            client.log_text(self.run_id, op[1], op[2])
        elif kind == "table":
            _, rows, artifact_file, step = op
            if rows and (artifact_file, step) not in self._tables:
                client.log_table(self.run_id, data={k: [r.get(k) for r in rows] for k in rows[0]},
                                 artifact_file=artifact_file)
                self._tables.add((artifact_file, step))

    def _loop(self) -> None:
        client = make_client(self._uri)
        down_since: float | None = None
        while True:
            with self._cv:
                while not self._ops and not self._closing and not self._abandoned:
                    self._cv.wait()
                if self._abandoned or (self._closing and not self._ops):
                    return
                op = self._ops[0]
            try:
                if self.run_id is None:
                    self.run_id = self._open_run(client)
                    self._steps = {int(m.step) for m in client.get_metric_history(self.run_id, "step")}
                self._apply(client, op)
            except Exception as e:  # noqa: BLE001 - classified below: retried or reported, never lost silently
                if not is_transient(e):
                    # Dropped with its cause, not retried: it would hold up every call queued behind it (a table's
                    # copy stays beside its checkpoint).
                    cause = f" ({type(e.__cause__).__name__}: {str(e.__cause__)[:300]})" if e.__cause__ else ""
                    self._log(f"[mlflow] dropped a {op[0]} call MLflow refused: {_short(e)}{cause}")
                else:
                    if down_since is None:
                        down_since = time.monotonic()
                        self.outages += 1
                        self._log(f"[mlflow] tracking server unreachable ({_short(e)}); training goes on, "
                                  f"calls are queued and retried every {self._retry_s:g} s")
                    with self._cv:
                        self._cv.wait(self._retry_s)
                    continue
            if down_since is not None:
                self._log(f"[mlflow] tracking server back after {time.monotonic() - down_since:.0f} s; "
                          f"sending {len(self._ops)} queued call(s)")
                down_since = None
            with self._cv:
                self._ops.popleft()
