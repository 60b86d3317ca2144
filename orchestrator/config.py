"""The sweep config: the base trial plus search, scheduler, resources, tracking and storage.

    name: my-sweep
    trial:              # a trial config (trainables/config.py); swept keys override it per trial
      model: {name_or_path: Qwen/Qwen2.5-0.5B}
      data: {source: prefs.jsonl}
    search:
      space: seed-exercise            # a named space (dpo-sweep spaces) or an inline mapping
      algorithm: grid                 # grid | random | optuna
    scheduler: {kind: halving, grace_period: 2, reduction_factor: 3}
    resources: {cpu_per_trial: 1, gpu_per_trial: 0.25}
    tracking: {uri: null, experiment: my-sweep}
    storage: {path: dpo-sweep-output}

    dpo-sweep validate my_sweep.yaml --set search.algorithm=random
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, NonNegativeFloat, Tag, ValidationError, field_validator, model_validator

from search_spaces.inline import Domain
from trainables.config import ConfigError, StrictModel, TrialSpec
from trainables.config_io import apply_overrides, format_validation_error, read_yaml
from trainables.metrics import PRIMARY_METRIC, default_metric

# A named space or an inline one, told apart by type (tags start with '~': left out of error locations).
Space = Annotated[Annotated[str, Tag("~named")] | Annotated[dict[str, Domain], Tag("~inline")],
                  Discriminator(lambda v: "~named" if isinstance(v, str) else "~inline")]
# A number of GPUs per trial, or 'auto'.
GpuRequest = Annotated[Annotated[NonNegativeFloat, Tag("~number")] | Annotated[Literal["auto"], Tag("~auto")],
                       Discriminator(lambda v: "~auto" if isinstance(v, str) else "~number")]


class SearchSettings(StrictModel):
    space: Space = Field(
        "seed-exercise", description="A named space (see `dpo-sweep spaces`) or {key: {grid|choice|uniform|"
                                     "loguniform: ...}} declared inline.")
    algorithm: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid/random: Tune's variant generator; optuna: TPE (pip install 'dpo-sweep[optuna]').")
    num_samples: int = Field(1, ge=1, description="grid: repeats of the whole grid, each with its own dpo.seed "
                             "(replicates for the analysis); random/optuna: trials.")
    metric: str = Field(PRIMARY_METRIC, description="Held-out metric the schedulers and the analysis rank trials by; "
                        "default the first evaluation.reward_funcs entry's win rate against the reference "
                        "(eval_win_rate_<name>) where there is one, else held-out pair accuracy.")
    mode: Literal["max", "min"] = Field("max", description="Whether a larger metric is better (max) or smaller.")
    seed: int | None = Field(None, description="Seed of random/optuna sampling.")


class SchedulerSettings(StrictModel):
    kind: Literal["asha", "halving", "fifo"] = Field(
        "halving", description="asha stops weak trials early as they arrive at each rung; halving (synchronous successive "
                            "halving) pauses every trial at a rung and keeps the best, the same ones in every run; "
                            "fifo runs all (orchestrator/schedulers.py).")
    grace_period: int = Field(1, ge=1, description="Reports every trial gets before it may be stopped.")
    reduction_factor: float = Field(3, gt=1, description="Keep the top 1/reduction_factor at each rung.")


class ResourceSettings(StrictModel):
    cpu_per_trial: float = Field(1, gt=0, description="CPUs reserved per trial (and its torch threads).")
    gpu_per_trial: GpuRequest = Field(
        0.0, description="GPUs per trial; a fraction packs several trials per GPU; 'auto' packs as many as fit "
                       "by the memory estimate (trainables/memory.py).")
    gpu_memory_gib: float | None = Field(
        None, gt=0, description="Memory of one GPU, for packing checks when joining a cluster (read from the local "
                                "GPU otherwise).")
    gpu_headroom: float = Field(0.15, ge=0, lt=1, description="Fraction of each GPU kept free when packing.")
    max_trials_per_gpu: int = Field(16, ge=1, description="Cap of 'auto' packing.")
    custom: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per trial, to pin trials to a node group: "
                                          "{gpu_worker: 1} with workers started with --resources "
                                          "'{\"gpu_worker\": 1000}'.")
    cluster_autoscales: bool = Field(
        False, description="The cluster adds nodes on demand: capacity is not checked against the nodes up now.")
    max_concurrent_trials: int | None = Field(None, ge=1, description="Cap on trials running at once.")
    max_failures: int = Field(1, ge=0, description="Retries of a crashed trial, from its last checkpoint.")
    resident_model: bool = Field(
        True, description="Keep the loaded base model in each worker between the trials it runs and between a "
                          "paused trial's pause and resume (trainables/resident.py); false loads it for every trial "
                          "and every resume, as before.")


class TrackingSettings(StrictModel):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<storage.path>/mlflow.db.")
    experiment: str | None = Field(None, description="MLflow experiment; default the sweep name.")
    patience_s: float = Field(300, ge=0, description="At the end of a sweep, how long to keep retrying an "
                              "unreachable tracking server before leaving the rest to `dpo-sweep sync-mlflow`.")
    flush_s: float = Field(60, ge=0, description="At the end of a trial, how long to wait for its queued MLflow "
                           "calls (the driver fills in the rest from Ray's results).")


class StorageSettings(StrictModel):
    # validate_default: a YAML that never names storage still gets an absolute path (Ray refuses a relative one).
    path: str = Field("dpo-sweep-output", validate_default=True,
                      description="Ray results, checkpoints and analysis (local dir or URI).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints Ray keeps per trial (best by metric).")

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return v if "://" in v else str(Path(v).expanduser().resolve())


# Near ties (`orchestrator.sweet_spot.robust_sweet_spot`): cells within this many binomial standard errors of the chosen one are a tie,
# said in the recommendation. Who wins a tie: the neighbourhood average ("score"), or the cell closest to the
# reference ("closest"). benchmarks/selection_regret.py measured "closest" no better on the synthetic task and worse
# on the real one (regret 0.2 on a seed where pair accuracy on 32 pairs tied two cells whose answers were 0.475 and
# 0.275), so the tie is stated and the score keeps the pick (docs/sweeps.md, "Choosing the trial").
TIE_SE = 1.0
TIE_BREAK = "score"


class AnalysisSettings(StrictModel):
    tie_se: float = Field(TIE_SE, ge=0, description="Cells whose own mean is within this many standard errors of "
                          "the chosen cell's (binomial, on the held-out pairs or generation prompts the metric "
                          "counts) are a near tie, and the recommendation says so; 0 turns the check off.")
    tie_break: Literal["score", "closest"] = Field(
        TIE_BREAK, description="Who wins a near tie: the best neighbourhood average ('score'), or the cell whose "
                               "generations moved least from the reference, lowest gen_kl ('closest').")
    max_abs_logratio: float | None = Field(
        None, gt=0, description="Leave trials whose mean |log pi - log pi_ref| on held-out completions ends above "
                                "this (nats) out of the sweet spot; None keeps all. 1.4 separated collapsed from "
                                "healthy policies on the synthetic benchmark (short answers; scale with length).")


class SweepConfig(StrictModel):
    shared_reference: bool = Field(
        True, description="Tokenize the data and compute reference log-probs once per sweep, shared by all "
                          "trials (off: each trial runs TRL's own reference forward pass every step).")
    name: str = Field("dpo-sweep", pattern=r"^[A-Za-z0-9._-]+$", description="Sweep name (letters, digits, ._-).")
    trial: TrialSpec = Field(default_factory=TrialSpec, description="The base trial; swept keys override it.")
    search: SearchSettings = Field(default_factory=SearchSettings, description="What is searched, how, ranked by.")
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings, description="Early stopping: synchronous successive halving (the default), ASHA, or none (fifo).")
    resources: ResourceSettings = Field(default_factory=ResourceSettings, description="What each trial is given.")
    tracking: TrackingSettings = Field(default_factory=TrackingSettings, description="MLflow.")
    storage: StorageSettings = Field(default_factory=StorageSettings, description="Where results are kept.")
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings, description="The end-of-sweep analysis.")

    @model_validator(mode="after")
    def _rank_by_win_rate(self) -> SweepConfig:
        if "metric" not in self.search.model_fields_set:
            self.search.metric = default_metric(self.trial.evaluation.reward_funcs)
        return self

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def tracking_uri(self) -> str:
        """tracking.uri, else the local sqlite store beside Ray's results."""
        from trainables.tracking import default_tracking_uri

        return self.tracking.uri or default_tracking_uri(self.storage.path)


def validate_sweep_config(raw: dict[str, Any], source: str | None = None) -> SweepConfig:
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, SweepConfig), source=source) from None


def load_sweep_config(path: str | Path | None = None, overrides: list[str] = ()) -> SweepConfig:
    raw = read_yaml(path) if path is not None else {}
    cfg = validate_sweep_config(apply_overrides(raw, list(overrides)), source=str(path) if path is not None else None)
    ev = cfg.trial.evaluation
    if ev.reward_funcs and ev.import_dir is None:
        # A reward module kept where the sweep is started from (beside its YAML) must import in every trial,
        # whose working directory Ray changes.
        ev.import_dir = str(Path.cwd())
    return cfg
