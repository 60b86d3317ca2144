"""One QLoRA DPO trial as a plain function: `run_trial(spec, report)`.

The base model is loaded in 4-bit by bitsandbytes, TRL's DPOTrainer adds the peft LoRA adapter
(`trainables.trainer`), and `report(metrics, checkpoint_dir)` is called `dpo.reports_per_epoch`
times per epoch, at evenly spaced optimizer steps, with the held-out metrics and a checkpoint
(adapter + optimizer + trainer state). Ray is not touched here: the Tune entry passes
`ray.tune.report`, tests pass a list's `append`, and `dpo-sweep trial` passes a printer.

    dpo-sweep trial --set dpo.beta=0.2 --set dpo.learning_rate=1e-4
    python -c "from trainables.trial import run_trial; from trainables.config import TrialSpec; \\
run_trial(TrialSpec(), lambda m, c: print(m))"
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.config import TrialSpec
from trainables.metrics import Report
from trainables.timing import PhaseClock


@dataclass
class TrialResult:
    reports: int
    flagged_at_step: int | None
    last_metrics: dict[str, Any]
    final_checkpoint: str | None
    data_description: str
    dropped_rows: dict[str, int] = field(default_factory=dict)
    trainer: Any = field(default=None, repr=False)  # the DPOTrainer, for inspection; callers may drop it


class TrialOutOfMemory(RuntimeError):
    """A trial ran out of (GPU or host) memory; the message names the settings that fix it."""


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def out_of_memory_message(spec: TrialSpec, step: int, exc: BaseException) -> str:
    d = spec.dpo
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
    return (f"TrialOutOfMemory at step {step}: per_device_train_batch_size={d.per_device_train_batch_size}, "
            f"max_length={d.max_length}, beta={d.beta}, learning_rate={d.learning_rate:g}. Fix: lower "
            f"dpo.per_device_train_batch_size (raise dpo.gradient_accumulation_steps to keep the effective batch of "
            f"{d.per_device_train_batch_size * d.gradient_accumulation_steps}) or dpo.max_length, turn on "
            f"dpo.gradient_checkpointing, or give each trial more memory (resources.gpu_per_trial, or "
            f"resources.max_trials_per_gpu / max_concurrent_trials lower). ({first})")


def run_trial(spec: TrialSpec, report: Report, resume_from: str | None = None, log=print,
              shared_reference: str | None = None, resident: bool = False,
              clock: PhaseClock | None = None) -> TrialResult:
    """Train one trial; `resume_from` is a checkpoint directory written by an earlier report.

    Resumed, it continues from that checkpoint's step (adapter, optimizer, scheduler, RNG and data
    order restored) and reports only the steps after it. `resident`: use the base model this process keeps
    loaded between trials (`trainables.resident`) and hand it back, cleaned, however the trial ends; the
    result then carries no trainer. `clock`: the trial's phase clock, when the caller started timing earlier.
    """
    from trainables.trainer import build_trainer, check_trainer_config  # TRL: imported when a trial runs

    clock = clock or PhaseClock()
    check_trainer_config(spec)  # TRL's and transformers' own refusals, before a model is loaded
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trial_spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
    trainer = None
    try:
        trainer, data, callback = build_trainer(spec, report, log=log, shared_reference=shared_reference,
                                                clock=clock, resident=resident)
        if resume_from:
            callback.restore(resume_from)
        _train(trainer, spec, resume_from)
        flagged = callback.monitor.flagged_at_step if callback.monitor else None
        return TrialResult(reports=callback.reports, flagged_at_step=flagged, last_metrics=callback.last_metrics,
                           final_checkpoint=callback.last_checkpoint, data_description=data.description,
                           dropped_rows=data.dropped, trainer=None if resident else trainer)
    finally:
        if resident:  # success, failure or out of memory: the next trial gets a clean model and the memory back
            from trainables import resident as resident_model

            model = trainer.model if trainer is not None else None
            trainer = None  # the optimizer state and the trainer's references go with it
            resident_model.strip_trial(model, log=log)


def _train(trainer, spec: TrialSpec, resume_from: str | None) -> None:
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except MemoryError as e:  # torch.OutOfMemoryError (CUDA, XPU) is a RuntimeError; see below
        raise TrialOutOfMemory(out_of_memory_message(spec, trainer.state.global_step, e)) from e
    except RuntimeError as e:
        if not _is_oom(e):
            raise
        raise TrialOutOfMemory(out_of_memory_message(spec, trainer.state.global_step, e)) from e
