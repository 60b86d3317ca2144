"""One QLoRA DPO trial as a plain function: `run_trial(spec, report)`.

The base model is loaded in 4-bit by bitsandbytes, TRL's DPOTrainer adds the
peft LoRA adapter, and `report(metrics, checkpoint_dir)` is called
`dpo.reports_per_epoch` times per epoch, at evenly spaced optimizer steps, with
the held-out metrics and a checkpoint (adapter + optimizer + trainer state).
Ray is not touched here: the Tune entry passes `ray.tune.report`, tests pass a
list's `append`, and `dpo-sweep trial` passes a printer.

    dpo-sweep trial --set dpo.beta=0.2 --set dpo.learning_rate=1e-4
    python -c "from trainables.trial import run_trial; from trainables.config import TrialSpec; \\
run_trial(TrialSpec(), lambda m, c: print(m))"
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.config import ConfigError, TrialSpec
from trainables.detectors import REFERENCE_PREFIX

Report = Callable[[dict[str, Any], str | None], None]
PRIMARY_METRIC = "eval_rewards_accuracies"
# Held-out metrics in every report: TRL's eval keys ('/' -> '_') plus the drift probe.
EVAL_METRICS = (
    "eval_loss", "eval_rewards_accuracies", "eval_rewards_margins", "eval_rewards_chosen", "eval_rewards_rejected",
    "eval_logps_chosen", "eval_logps_rejected", "eval_logits_chosen", "eval_logits_rejected", "eval_entropy",
    "eval_mean_token_accuracy", "eval_abs_logratio", "eval_abs_logratio_per_token", "eval_chosen_logratio_per_token",
    "eval_rejected_logratio_per_token",
)
# Bundled tasks only (data.source synthetic or arithmetic): probes with known answers.
ANSWER_METRICS = ("answer_exact_rate", "answer_valid_rate", "answer_length_tokens")


def reported_metrics(has_probes: bool) -> set[str]:
    """Names a sweep may rank or watch trials by."""
    return set(EVAL_METRICS) | (set(ANSWER_METRICS) if has_probes else set())


@dataclass
class TrialResult:
    reports: int
    flagged_at_step: int | None
    last_metrics: dict[str, Any]
    final_checkpoint: str | None
    data_description: str
    dropped_rows: dict[str, int] = field(default_factory=dict)
    trainer: Any = field(default=None, repr=False)  # the DPOTrainer, for inspection; callers may drop it


def loss_settings(loss_type: str, label_smoothing: float) -> dict[str, Any]:
    """DPOConfig loss fields; for 'sigmoid' with label smoothing, conservative DPO (cDPO).

    TRL 1.16's sigmoid loss ignores label_smoothing. cDPO with flip rate e is
        L = -(1-e) log s(x) - e log s(-x),   x = beta * (chosen - rejected log-ratio)
    and TRL's robust loss is R = (-(1-e) log s(x) + e log s(-x)) / (1-2e), so
        L = 2(1-e) * sigmoid - (1-2e) * R,
    a weighted sum of two TRL losses: TRL's own loss code, metrics and logging stay in charge.
    """
    if loss_type == "sigmoid" and label_smoothing > 0:
        e = label_smoothing
        return {"loss_type": ["sigmoid", "robust"], "loss_weights": [2 * (1 - e), -(1 - 2 * e)],
                "label_smoothing": e}
    return {"loss_type": [loss_type], "loss_weights": None, "label_smoothing": label_smoothing}


def build_dpo_config(spec: TrialSpec, device):
    """The one place a TrialSpec becomes a TRL DPOConfig (`device`: where the trial trains)."""
    from trl import DPOConfig

    from trainables.model import resolve_compute_dtype

    d = spec.dpo
    dtype = resolve_compute_dtype(spec.model.compute_dtype, device)
    return DPOConfig(
        output_dir=spec.output_dir,
        beta=d.beta,
        learning_rate=d.learning_rate,
        num_train_epochs=d.num_train_epochs,
        gradient_accumulation_steps=d.gradient_accumulation_steps,
        **loss_settings(d.loss_type, d.label_smoothing),
        per_device_train_batch_size=d.per_device_train_batch_size,
        per_device_eval_batch_size=d.per_device_eval_batch_size,
        max_length=d.max_length,
        truncation_mode=d.truncation_mode,
        warmup_steps=d.warmup_ratio,  # transformers 5: a value below 1 is a fraction of the total steps
        lr_scheduler_type=d.lr_scheduler_type,
        weight_decay=d.weight_decay,
        seed=d.seed,
        data_seed=d.seed,
        precompute_ref_log_probs=d.precompute_ref_log_probs,
        # Forward only, no gradients: the eval batch size fits, and fewer, larger batches are faster.
        precompute_ref_batch_size=d.per_device_eval_batch_size,
        gradient_checkpointing=d.gradient_checkpointing,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=device.type == "cpu",
        # Evaluation, logging and saving are driven by ReportCallback at exact steps, not by Trainer strategies.
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        save_total_limit=spec.save_total_limit,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def report_steps(max_steps: int, num_epochs: int, reports_per_epoch: int) -> list[int]:
    """Evenly spaced optimizer steps, the last one the final step: every trial reports the same number of
    times whatever its size, epochs or accumulation - what ASHA's time axis needs."""
    n = num_epochs * reports_per_epoch
    if max_steps < n:
        raise ConfigError([(
            f"dpo.reports_per_epoch={reports_per_epoch} x num_train_epochs={num_epochs} = {n} reports, but the trial "
            f"has only {max_steps} optimizer steps; lower dpo.reports_per_epoch, the batch size or "
            "gradient_accumulation_steps, or use more data"
        )])
    return [math.ceil(k * max_steps / n) for k in range(1, n + 1)]


def clean_metric_name(key: str) -> str:
    """'eval_rewards/accuracies' -> 'eval_rewards_accuracies' ('/' nests keys in Ray Tune results)."""
    return key.replace("/", "_")


STATE_FILE = "dpo_sweep_state.json"  # beside each checkpoint: what the trial needs to resume its own bookkeeping


def _make_callback(report: Report, spec: TrialSpec, probes, tokenizer, log=print):
    from transformers import TrainerCallback

    from trainables.probes import answer_quality, probe_settings, reference_divergence
    from trainables.reward_hacking import RewardHackingMonitor

    reports_per_epoch = spec.dpo.reports_per_epoch
    score, max_new_tokens = probe_settings(spec.data)

    class ReportCallback(TrainerCallback):
        """Evaluate + log + save at fixed steps; report once the checkpoint of that step exists."""

        def __init__(self):
            self.steps: set[int] = set()
            self.train_logs: dict[str, float] = {}
            self.pending: dict[str, Any] | None = None
            self.reports = 0
            self.last_metrics: dict[str, Any] = {}
            self.last_checkpoint: str | None = None
            self.reference: dict[str, float] = {}
            self.monitor = (RewardHackingMonitor(spec.reward_hacking, reports_per_epoch)
                            if spec.reward_hacking.enabled else None)

        def restore(self, checkpoint_dir: str) -> None:
            path = Path(checkpoint_dir, STATE_FILE)
            state = json.loads(path.read_text()) if path.is_file() else {}
            self.reference = state.get("reference", {})
            if self.monitor and "reward_hacking" in state:
                self.monitor = RewardHackingMonitor.from_state(spec.reward_hacking, state["reward_hacking"])

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.steps = set(report_steps(state.max_steps, math.ceil(args.num_train_epochs), reports_per_epoch))
            # The reference model's answers to the probes (`ref_answer_exact_rate`, ...), measured once and carried
            # in every report: where the answer signals' peaks start, so a collapse before the first report is seen.
            if probes and model is not None and not self.reference:
                if state.global_step == 0:  # a fresh LoRA adapter (B = 0) is the identity: this is the reference
                    quality = self.probe(model)
                else:  # a checkpoint of an older version, without the reference's answers
                    with model.disable_adapter():
                        quality = self.probe(model)
                self.reference = {REFERENCE_PREFIX + k: v for k, v in quality.items()}
                log("[trial] reference model: " + ", ".join(f"{k} {v:.3g}" for k, v in quality.items()))

        def probe(self, model) -> dict[str, float]:
            return answer_quality(model, tokenizer, probes, batch_size=spec.dpo.per_device_eval_batch_size,
                                  max_new_tokens=max_new_tokens, score=score)

        def on_step_end(self, args, state, control, **kw):
            if state.global_step in self.steps:
                control.should_log = control.should_evaluate = control.should_save = True

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs and not any(k.startswith("eval_") for k in logs):
                self.train_logs = {f"train_{clean_metric_name(k)}": v for k, v in logs.items()
                                   if isinstance(v, (int, float)) and k != "epoch"}

        def on_evaluate(self, args, state, control, metrics=None, model=None, eval_dataloader=None, **kw):
            m = {clean_metric_name(k): v for k, v in (metrics or {}).items()
                 if k.startswith("eval_") and isinstance(v, (int, float))}
            if probes:
                m.update(self.probe(model))
            if eval_dataloader is not None:
                m.update(reference_divergence(model, eval_dataloader))
            self.pending = m

        def on_save(self, args, state, control, **kw):
            ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            metrics = {**(self.pending or {}), **self.reference, **self.train_logs, "step": state.global_step,
                       "epoch": round(state.epoch or 0.0, 4)}
            self.pending = None
            # A NaN or Inf loss or metric does not come back: say so and stop spending compute on it.
            non_finite = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
            metrics["diverged"] = float(bool(non_finite))
            if non_finite:
                control.should_training_stop = True
            saved = {"reference": self.reference}
            if self.monitor:
                metrics.update(self.monitor.update(metrics))
                saved["reward_hacking"] = self.monitor.state()
                if self.monitor.should_stop:
                    control.should_training_stop = True
            Path(ckpt, STATE_FILE).write_text(json.dumps(saved))
            self.reports += 1
            self.last_metrics, self.last_checkpoint = metrics, ckpt
            report(metrics, ckpt)

    return ReportCallback()


def build_trainer(spec: TrialSpec, report: Report, log=print, data=None, shared_reference: str | None = None):
    """(trainer, data, callback): everything set up, nothing trained. Tests inspect the trainer directly.

    `data`: already loaded and validated rows (else loaded from spec.data). `shared_reference`: a
    directory of `trainables.reference` - token ids and reference log-probs computed once for the
    sweep; the trial then neither tokenizes nor runs a reference forward pass.
    """
    import datasets
    import transformers
    from transformers.trainer_callback import PrinterCallback

    from trainables.data import PreferenceData, load_preference_data
    from trainables.model import load_base_model, lora_config, trial_device
    from trainables.reference import load_shared_datasets
    from trainables.sweep_trainer import SweepDPOTrainer

    # The caller's report callable is the trial's output; library progress bars would bury it.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    device = trial_device()
    model, tokenizer = load_base_model(spec.model, spec.cache_dir, device=device, log=log)
    if shared_reference:
        train_ds, eval_ds, meta = load_shared_datasets(shared_reference)
        data = PreferenceData(train=[], eval=[], probes=[tuple(p) for p in meta["probes"]],
                              conversational=meta["conversational"],
                              description=f"{meta['description']} (shared reference {meta['key']})")
        spec = spec.model_copy(deep=True)
        spec.dpo.precompute_ref_log_probs = True  # read from the dataset columns, never recomputed
    else:
        data = data or load_preference_data(spec.data, tokenizer, spec.dpo.max_length, spec.dpo.truncation_mode)
        train_ds, eval_ds = datasets.Dataset.from_list(data.train), datasets.Dataset.from_list(data.eval)
    if data.dropped:
        log(f"[trial] drop_invalid: dropped {sum(data.dropped.values())} row(s): "
            + ", ".join(f"{k} {v}" for k, v in data.dropped.items()))
    log(f"[trial] data: {data.description}; {train_ds.num_rows} train / {eval_ds.num_rows} eval pairs; "
        f"device {device}")

    callback = _make_callback(report, spec, data.probes, tokenizer, log=log)
    trainer = SweepDPOTrainer(
        model=model,
        args=build_dpo_config(spec, device),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(spec.lora),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every raw log dict; `report` is the output
    return trainer, data, callback


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
              shared_reference: str | None = None) -> TrialResult:
    """Train one trial; `resume_from` is a checkpoint directory written by an earlier report.

    Resumed, it continues from that checkpoint's step (adapter, optimizer, scheduler, RNG and data
    order restored) and reports only the steps after it.
    """
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trial_spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
    trainer, data, callback = build_trainer(spec, report, log=log, shared_reference=shared_reference)
    if resume_from:
        callback.restore(resume_from)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except MemoryError as e:  # torch.OutOfMemoryError (CUDA, XPU) is a RuntimeError; see below
        raise TrialOutOfMemory(out_of_memory_message(spec, trainer.state.global_step, e)) from e
    except RuntimeError as e:
        if not _is_oom(e):
            raise
        raise TrialOutOfMemory(out_of_memory_message(spec, trainer.state.global_step, e)) from e
    flagged = callback.monitor.flagged_at_step if callback.monitor else None
    return TrialResult(reports=callback.reports, flagged_at_step=flagged, last_metrics=callback.last_metrics,
                       final_checkpoint=callback.last_checkpoint, data_description=data.description,
                       dropped_rows=data.dropped, trainer=trainer)
