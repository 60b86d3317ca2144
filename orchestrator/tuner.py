"""Building the Ray Tune `Tuner` of a sweep: search algorithm, scheduler, resources, run config."""

from __future__ import annotations

from typing import Any

from orchestrator.config import SweepConfig
from orchestrator.schedulers import build_scheduler
from trainables.tune_entry import SweepContext, tune_trainable


def build_search_alg(cfg: SweepConfig, space: dict[str, Any]):
    """None (Tune's variant generator: grids expanded, ranges sampled) or Optuna TPE."""
    if cfg.search.algorithm != "optuna":
        return None, space
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    # Optuna refuses grid_search: a grid becomes a choice among its values.
    space = {k: tune.choice(d["grid_search"]) if isinstance(d, dict) and "grid_search" in d else d
             for k, d in space.items()}
    searcher = OptunaSearch(seed=cfg.search.seed)
    # Synchronous halving decides a rung once every trial has reported there: all must exist by then.
    live = cfg.search.num_samples if cfg.scheduler.kind == "halving" else cfg.resources.max_concurrent_trials or 4
    return ConcurrencyLimiter(searcher, max_concurrent=live), space


def trial_name(trial) -> str:
    """'beta=0.1,learning_rate=0.0005' style names: what the table and MLflow show."""
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(trial.config.items())]
    return f"{trial.trial_id}[{','.join(parts)}]" if parts else trial.trial_id


def build_trainable(cfg: SweepConfig, context: SweepContext, gpu_per_trial: float = 0.0):
    """The trial function with the sweep's context bound and its resources declared."""
    from ray import tune

    resources = {"cpu": cfg.resources.cpu_per_trial, **cfg.resources.custom}
    if gpu_per_trial:
        resources["gpu"] = gpu_per_trial
    return tune.with_resources(tune.with_parameters(tune_trainable, context=context), resources)


def build_tuner(cfg: SweepConfig, space: dict[str, Any], context: SweepContext, run_name: str, max_reports: int,
                gpu_per_trial: float = 0.0, callbacks: list | None = None, num_samples: int | None = None,
                num_trials: int | None = None):
    """`gpu_per_trial`: as preflight resolved it ('auto' -> 1/k); `num_trials`: how many trials the sweep makes,
    as preflight counted them (synchronous halving holds them all in one bracket)."""
    from ray import tune

    search_alg, space = build_search_alg(cfg, space)
    return tune.Tuner(
        build_trainable(cfg, context, gpu_per_trial),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=cfg.search.metric,
            mode=cfg.search.mode,
            search_alg=search_alg,
            scheduler=build_scheduler(cfg.scheduler, max_reports, num_trials, cfg.resources.max_concurrent_trials,
                                      cfg.analysis.max_abs_logratio),
            num_samples=num_samples or cfg.search.num_samples,
            # Tune's cap counts paused trials as live; synchronous halving pauses every trial at a rung, so it
            # caps the running ones itself (else no trial past the cap would ever be created).
            max_concurrent_trials=None if cfg.scheduler.kind == "halving" else cfg.resources.max_concurrent_trials,
            # A fresh actor per trial re-imports torch, transformers and TRL (seconds each time); every
            # trial loads its own model and seeds itself, so nothing carries over between trials.
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=lambda t: t.trial_id,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=cfg.storage.path,
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=cfg.storage.keep_checkpoints,
                checkpoint_score_attribute=cfg.search.metric,
                checkpoint_score_order=cfg.search.mode,
            ),
            callbacks=callbacks or [],
            verbose=0,
        ),
    )
