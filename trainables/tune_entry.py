"""The Ray Tune entry of a trial: the thin layer between Tune and `run_trial`.

It applies the swept values to the base trial config, resumes from Tune's checkpoint when the
trial is restarted, opens (or continues) the trial's nested MLflow run, and turns every report
into an MLflow step and a `ray.tune.report` with the checkpoint directory.
"""

from __future__ import annotations

import time

_LOADING_SINCE = time.perf_counter()  # a fresh worker starts loading the trial's code here (see tune_trainable)

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.generation import TABLE_FILE
from trainables.params import trial_spec
from trainables.timing import PhaseClock
from trainables.tracking import FLAG_TAG, TrialRunLogger, open_trial_run, trial_run_fields


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep shares; handed over by `tune.with_parameters`."""

    base_spec: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    cpu_per_trial: float
    shared_reference: str | None = None  # trainables.reference directory, when the sweep shares one
    tracking_flush_s: float = 60.0  # at a trial's end, how long to wait for queued MLflow calls
    resident_model: bool = True  # keep the base model loaded in the worker between trials (trainables.resident)


_LOADED_IN = time.perf_counter() - _LOADING_SINCE  # this module and what it imports (torch, MLflow, ...)
_first_trial_in_process = True

# Beyond the MLflow flush, what a trial's end may take before its worker is free: the adapter unloaded from the
# resident model, the optimizer state collected. Seconds on a loaded machine, never minutes.
CLEANUP_MARGIN_S = 120.0
THREAD_TIMEOUT_ENV = "TUNE_FUNCTION_THREAD_TIMEOUT_S"


def hold_worker_for_cleanup(flush_s: float) -> int:
    """Let a reused worker wait for the previous trial's end instead of failing the next trial.

    Under `reuse_actors`, Ray hands a worker its next trial only once the previous trial's thread has ended,
    and waits `TUNE_FUNCTION_THREAD_TIMEOUT_S` (default 2 s) for it, read in the worker at each hand-over. This
    module's cleanup (MLflow flush up to `flush_s`, the resident model stripped) outlasts that on a busy machine;
    Ray then fails the next trial outright ("Trainable runner reuse requires reset_config() ...") and tells no
    scheduler, so synchronous halving waited on it forever (seen in CI). Raised, never lowered; returns it."""
    needed = int(flush_s + CLEANUP_MARGIN_S)
    try:
        current = int(float(os.environ.get(THREAD_TIMEOUT_ENV, "0")))
    except ValueError:
        current = 0
    wait = max(current, needed)
    os.environ[THREAD_TIMEOUT_ENV] = str(wait)
    return wait


def tune_trainable(params: dict[str, Any], context: SweepContext) -> None:
    global _first_trial_in_process
    import torch

    # Ray sets OMP_NUM_THREADS from the trial's CPUs; torch must agree (before TRL and friends load), or two
    # 2-thread trials on 2 cores spin against each other (seen here: 16x slower).
    torch.set_num_threads(max(1, int(context.cpu_per_trial)))
    hold_worker_for_cleanup(context.tracking_flush_s)
    clock = PhaseClock()
    if _first_trial_in_process:  # a reused worker (reuse_actors) pays its start-up once, for its first trial
        _first_trial_in_process = False
        # The interpreter's and Ray's own start before it is not counted: Ray starts workers ahead, idle.
        clock.add_before("worker_start", _LOADED_IN)
        with clock.phase("imports"):  # torch, transformers, TRL, peft, bitsandbytes
            import trainables.trainer  # noqa: F401
    import ray
    from ray import tune

    from trainables.trial import run_trial

    ctx = tune.get_context()
    trial_dir = Path(ctx.get_trial_dir())
    spec = trial_spec(context.base_spec, params, output_dir=str(trial_dir / "hf"))

    # Tracking never holds training up: a queue drained by a background thread (see TrialRunLogger).
    # MLflow's own HTTP retries (minutes of backoff) would only delay that thread's own retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    node = ray.get_runtime_context().get_node_id()
    run_params, tags = trial_run_fields(spec.model_dump(mode="json"), params, node=node, pid=os.getpid())
    tracker = TrialRunLogger(context.tracking_uri, log=_worker_log, open_run=lambda client: open_trial_run(
        client, context.experiment_id, context.parent_run_id, ctx.get_trial_id(), ctx.get_trial_name(),
        params=run_params, tags=tags))
    # A restarted trial continues its run, and metrics are idempotent by step: a step logged before a
    # crash and repeated after the restart is in the run once.
    tracker.log_text(json.dumps(spec.model_dump(mode="json"), indent=2), "trial_spec.json")

    flagged = False

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        nonlocal flagged
        tracker.log_metrics(metrics, step=int(metrics["step"]))
        if metrics.get("reward_hack_flag") and not flagged:
            flagged = True
            tracker.set_tag(FLAG_TAG, f"flagged at step {metrics['step']} by {metrics['reward_hack_signal']}: "
                                      f"{metrics['reward_hack_detail']}")
        table = Path(checkpoint_dir, TABLE_FILE) if checkpoint_dir else None
        if table is not None and table.is_file():  # the generation evaluation's completions at this report
            tracker.log_table(json.loads(table.read_text()), TABLE_FILE, step=int(metrics["step"]))
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        # The node rides along in Ray's results (Ray records the pid itself): a run the driver creates later
        # from those results carries the same tags as one the trial opened.
        tune.report({**metrics, "node_id": node}, checkpoint=checkpoint)

    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            run_trial(spec, report, log=_worker_log, shared_reference=context.shared_reference,
                      resident=context.resident_model, clock=clock)
        else:
            with contextlib.ExitStack() as stack:
                with clock.phase("checkpoint_restore"):  # fetched from the sweep's storage
                    d = stack.enter_context(checkpoint.as_directory())
                run_trial(spec, report, resume_from=d, log=_worker_log, shared_reference=context.shared_reference,
                          resident=context.resident_model, clock=clock)
    finally:
        left = tracker.close(timeout=context.tracking_flush_s)
        if left:
            _worker_log(f"[mlflow] {left} call(s) not delivered in {context.tracking_flush_s:.0f} s; the driver "
                        "fills the run in from Ray's results at the end of the sweep")


def _worker_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # lands in the worker's log under the Ray session dir
