"""A trial's trainer: TRL's DPOTrainer, the DPOConfig built from a TrialSpec, and the callback that
evaluates, saves and reports at fixed steps. `build_trainer` sets all of it up and trains nothing
(tests and benchmarks inspect the trainer); `trainables.trial.run_trial` trains.

`SweepDPOTrainer` is TRL's DPOTrainer with what a sweep trial needs on top:

1. Resume keeps the adapter's dtype. TRL 1.16 casts a QLoRA adapter's weights to bf16 when it
   builds the trainer; resuming a checkpoint goes through peft's `load_adapter`, which upcasts them
   to fp32 again, so a resumed trial trained at another precision than an uninterrupted one and
   drifted away from it (seen here: 1-2 % apart in the final LoRA weights).
2. Data prepared once per sweep is used as it is. TRL re-tokenizes every dataset it is given and,
   with `precompute_ref_log_probs`, recomputes the reference log-probs (its cache is keyed by the
   in-memory dataset, so nothing is shared between trials). Datasets that already carry token ids
   and reference log-probs (see `trainables.reference`) skip both.
3. On a CPU the LM head scores completion tokens only: `trainables.trl_patches` (imported here), the one
   change this project makes to TRL itself, process-wide.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from trainables.config import ConfigError, TrialSpec
from trainables.detectors import REFERENCE_PREFIX
from trainables.metrics import Report, clean_metric_name
from trainables.probes import HeldOutDivergence
from trainables.timing import PhaseClock
from trainables.trl_patches import apply as apply_trl_patches

apply_trl_patches()

STATE_FILE = "dpo_sweep_state.json"  # beside each checkpoint: what the trial needs to resume its own bookkeeping


TOKENIZED_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


class SweepDPOTrainer(DPOTrainer):
    clock: PhaseClock | None = None  # set by build_trainer: where the trial's seconds go (trainables.timing)
    divergence: HeldOutDivergence | None = None  # set by build_trainer: fed by the evaluation's own forward passes

    def _timed(self, phase: str):
        return self.clock.phase(phase) if self.clock is not None else contextlib.nullcontext()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        with self._timed("checkpoint_restore"):
            dtypes = {n: p.dtype for n, p in self.model.named_parameters() if p.requires_grad}
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            for name, param in self.model.named_parameters():
                if name in dtypes and param.dtype != dtypes[name]:
                    param.data = param.data.to(dtypes[name])

    def _load_optimizer_and_scheduler(self, checkpoint):
        with self._timed("checkpoint_restore"):
            super()._load_optimizer_and_scheduler(checkpoint)

    def _save_checkpoint(self, model, trial):
        with self._timed("checkpoint_save"):
            super()._save_checkpoint(model, trial)

    def evaluate(self, *args, **kwargs):
        if self.divergence is not None:
            self.divergence.reset()
        with self._timed("evaluation"):  # the probes and generations inside count as their own phases
            return super().evaluate(*args, **kwargs)

    def _compute_loss(self, model, inputs, return_outputs):
        # In evaluation, the held-out divergence reads the log-probs of TRL's own passes (the policy's, then the
        # reference's unless precomputed) instead of forwarding every pair a second time.
        if self.model.training or self.divergence is None:
            return super()._compute_loss(model, inputs, return_outputs)
        log_probs = []
        hook = self.model.register_forward_hook(lambda _m, _a, out: log_probs.append(out.log_probs.detach()))
        try:
            result = super()._compute_loss(model, inputs, return_outputs)
        finally:
            hook.remove()
        mask = inputs["completion_mask"][:, 1:]
        policy = log_probs[0][:, -mask.shape[1]:].float().sum(-1)
        if "ref_chosen_logps" in inputs:
            ref = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]])
        else:
            ref = log_probs[1][:, -mask.shape[1]:].float().sum(-1)
        self.divergence.add(policy, ref, mask.sum(-1).clamp(min=1))
        return result

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if all(c in getattr(dataset, "column_names", ()) for c in TOKENIZED_COLUMNS):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        if all(c in getattr(dataset, "column_names", ()) for c in REFERENCE_COLUMNS):
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)


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


# DPOSettings fields that DPOConfig takes as they are, under the same name.
SAME_NAME_IN_DPOCONFIG = (
    "beta", "learning_rate", "num_train_epochs", "gradient_accumulation_steps", "per_device_train_batch_size",
    "per_device_eval_batch_size", "max_length", "truncation_mode", "lr_scheduler_type", "weight_decay", "seed",
    "precompute_ref_log_probs", "gradient_checkpointing",
)


def build_dpo_config(spec: TrialSpec, device):
    """The one place a TrialSpec becomes a TRL DPOConfig (`device`: where the trial trains)."""
    from trainables.model import resolve_compute_dtype

    d = spec.dpo
    dtype = resolve_compute_dtype(spec.model.compute_dtype, device)
    return DPOConfig(
        output_dir=spec.output_dir,
        **{name: getattr(d, name) for name in SAME_NAME_IN_DPOCONFIG},
        **loss_settings(d.loss_type, d.label_smoothing),
        warmup_steps=d.warmup_ratio,  # transformers 5: a value below 1 is a fraction of the total steps
        data_seed=d.seed,
        # Forward only, no gradients: the eval batch size fits, and fewer, larger batches are faster.
        precompute_ref_batch_size=d.per_device_eval_batch_size,
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


def check_trainer_config(spec: TrialSpec) -> None:
    """Build what TRL and transformers build from `spec` before any model is loaded - the DPOConfig and the
    learning-rate schedule - and turn their own refusals into a ConfigError. Preflight runs it for every
    candidate trial of a sweep, `run_trial` before loading anything. Built for a CPU: what depends on the
    trial's device (a GPU's bf16 support) is checked where the trial runs."""
    import torch
    from transformers import get_scheduler

    try:
        args = build_dpo_config(spec, torch.device("cpu"))
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
        get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(100),
                      num_training_steps=100, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError([f"dpo: TRL / transformers refuse this trial: {e}"]) from None


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


class ReportCallback(TrainerCallback):
    """Evaluate, log and save at `report_steps`; report once the checkpoint of that step exists.

    Each report carries TRL's held-out metrics, the drift probe (`trainables.probes`), the probe answers'
    quality on bundled tasks, the reference model's answers (`ref_answer_*`, measured once before the first
    step), the last train logs, and the reward-hacking monitor's verdict. A NaN or Inf ends the trial.
    """

    def __init__(self, report: Report, spec: TrialSpec, probes, tokenizer, log=print, generation=None,
                 clock: PhaseClock | None = None):
        from trainables.probes import probe_settings
        from trainables.reward_hacking import RewardHackingMonitor

        self.report_fn, self.spec, self.probes, self.tokenizer, self.log = report, spec, probes, tokenizer, log
        self.score, self.max_new_tokens = probe_settings(spec.data)
        self.reports_per_epoch = spec.dpo.reports_per_epoch
        self.steps: set[int] = set()
        self.train_logs: dict[str, float] = {}
        self.evaluated: dict[str, Any] | None = None
        self.reports = 0
        self.last_metrics: dict[str, Any] = {}
        self.last_checkpoint: str | None = None
        self.reference: dict[str, float] = {}
        self.tokens_per_step = 0.0  # set by build_trainer from the tokenized training set (`tokens_per_step`)
        self.compute = ""  # set by build_trainer: the compute dtype and device, e.g. 'bfloat16 on cuda'
        self.generation = generation  # trainables.generation.GenerationEval, or None
        self.completions: list[dict[str, Any]] = []  # this report's completions table
        self.monitor = (RewardHackingMonitor(spec.reward_hacking, self.reports_per_epoch)
                        if spec.reward_hacking.enabled else None)
        self.clock = clock or PhaseClock()
        self.divergence = HeldOutDivergence()

    def restore(self, checkpoint_dir: str) -> None:
        from trainables.reward_hacking import RewardHackingMonitor

        path = Path(checkpoint_dir, STATE_FILE)
        saved = json.loads(path.read_text()) if path.is_file() else {}
        self.reference = saved.get("reference", {})
        if self.generation is not None and saved.get("generation_reference"):
            self.generation.load_reference(saved["generation_reference"])
        if self.monitor and "reward_hacking" in saved:
            self.monitor = RewardHackingMonitor.from_state(self.spec.reward_hacking, saved["reward_hacking"])
        if "timing" in saved:  # the seconds of the runs before this one
            self.clock.carry(saved["timing"])

    def probe(self, model) -> dict[str, float]:
        from trainables.probes import answer_quality

        with self.clock.phase("probes"):
            return answer_quality(model, self.tokenizer, self.probes,
                                  batch_size=self.spec.dpo.per_device_eval_batch_size,
                                  max_new_tokens=self.max_new_tokens, score=self.score)

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.steps = set(report_steps(state.max_steps, math.ceil(args.num_train_epochs), self.reports_per_epoch))
        # The reference model's answers to the probes (`ref_answer_exact_rate`, ...), measured once and carried
        # in every report: where the answer signals' peaks start, so a collapse before the first report is seen.
        with self.clock.phase("reference"):  # the reference's own answers and completions, made once
            self._reference_answers(model, state)

    def _reference_answers(self, model, state) -> None:
        if self.probes and model is not None and not self.reference:  # not from the shared reference nor resumed
            if state.global_step == 0:  # a fresh LoRA adapter (B = 0) is the identity: this is the reference
                self.reference = self.reference_answers(model)
            else:  # a checkpoint of an older version, without the reference's answers
                with model.disable_adapter():
                    self.reference = self.reference_answers(model)
        self.ensure_generation_reference(model, state.global_step)

    def reference_answers(self, model) -> dict[str, float]:
        """The probes' quality as `ref_answer_*` (`model`: the reference, or a fresh adapter on it)."""
        quality = self.probe(model)
        self.log("[trial] reference model: " + ", ".join(f"{k} {v:.3g}" for k, v in quality.items()))
        return {REFERENCE_PREFIX + k: v for k, v in quality.items()}

    def ensure_generation_reference(self, model, step: int) -> None:
        """The reference's completions of the generation prompts, made once (here before the first step, or by
        the shared reference; read back from a checkpoint on resume)."""
        if self.generation is not None and model is not None and self.generation.reference is None:
            if step == 0:  # a fresh LoRA adapter (B = 0) is the identity: this is the reference
                self.generation.set_reference(model)
            else:
                with model.disable_adapter():
                    self.generation.set_reference(model)

    def on_step_begin(self, args, state, control, **kw):
        self.clock.begin("steps")  # forward, backward and the optimizer step of one optimizer step

    def on_step_end(self, args, state, control, **kw):
        self.clock.end("steps")
        if state.global_step in self.steps:
            control.should_log = control.should_evaluate = control.should_save = True

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs and not any(k.startswith("eval_") for k in logs):
            self.train_logs = {f"train_{clean_metric_name(k)}": v for k, v in logs.items()
                               if isinstance(v, (int, float)) and k != "epoch"}

    def on_evaluate(self, args, state, control, metrics=None, model=None, eval_dataloader=None, **kw):
        m = {clean_metric_name(k): v for k, v in (metrics or {}).items()
             if k.startswith("eval_") and isinstance(v, (int, float))}
        if self.probes:
            m.update(self.probe(model))
        if eval_dataloader is not None:
            m.update(self.divergence.metrics())  # read from TRL's evaluation pass (SweepDPOTrainer._compute_loss)
            m["eval_pairs"] = len(eval_dataloader.dataset)  # the resolution of the held-out rates: 1 / eval_pairs
        if self.generation is not None:
            self.ensure_generation_reference(model, state.global_step)  # an evaluation before any training
            with self.clock.phase("generation"):
                gen, self.completions = self.generation.evaluate(model, state.global_step)
            m.update(gen)
            m.update(self.generation.reference_metrics())
        self.evaluated = m

    def on_save(self, args, state, control, **kw):
        ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        metrics = {**(self.evaluated or {}), **self.reference, **self.train_logs, "step": state.global_step,
                   "epoch": round(state.epoch or 0.0, 4), "tokens_seen": state.global_step * self.tokens_per_step,
                   "compute": self.compute}
        self.evaluated = None
        # A NaN or Inf loss or metric does not come back: say so and stop spending compute on it.
        non_finite = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
        metrics["diverged"] = float(bool(non_finite))
        if non_finite:
            control.should_training_stop = True
        saved = {"reference": self.reference}
        if self.generation is not None:
            saved["generation_reference"] = self.generation.reference
            from trainables.generation import TABLE_FILE

            Path(ckpt, TABLE_FILE).write_text(json.dumps(self.completions))
        if self.monitor:
            metrics.update(self.monitor.update(metrics))
            saved["reward_hacking"] = self.monitor.state()
            if self.monitor.should_stop:
                control.should_training_stop = True
        metrics.update(self.clock.metrics())
        saved["timing"] = self.clock.totals()
        Path(ckpt, STATE_FILE).write_text(json.dumps(saved))
        self.reports += 1
        self.last_metrics, self.last_checkpoint = metrics, ckpt
        with self.clock.phase("report"):
            self.report_fn(metrics, ckpt)


def build_trainer(spec: TrialSpec, report: Report, log=print, data=None, shared_reference: str | None = None,
                  clock: PhaseClock | None = None, resident: bool = False):
    """(trainer, data, callback): everything set up, nothing trained. Tests inspect the trainer directly.

    `data`: already loaded and validated rows (else loaded from spec.data). `shared_reference`: a
    directory of `trainables.reference` - token ids and reference log-probs computed once for the
    sweep; the trial then neither tokenizes nor runs a reference forward pass. `resident`: take the base model
    this process keeps loaded between trials (`trainables.resident`; the caller hands it back with
    `resident.strip_trial`).
    """
    import datasets
    import transformers
    from transformers.trainer_callback import PrinterCallback

    from trainables.data import PreferenceData, load_preference_data
    from trainables.model import load_base_model, lora_config, trial_device
    from trainables.reference import load_shared_datasets

    # The caller's report callable is the trial's output; library progress bars would bury it.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    clock = clock or PhaseClock()
    device = trial_device()
    with clock.phase("model_load"):  # conversion and quantization included
        if resident:
            from trainables import resident as resident_model

            model, tokenizer, reused = resident_model.acquire(spec.model, spec.cache_dir, device, log=log)
            if reused:
                log("[trial] base model: resident in this worker since an earlier trial (not loaded again)")
        else:
            model, tokenizer = load_base_model(spec.model, spec.cache_dir, device=device, log=log)
    clock.begin("data")
    if shared_reference:
        train_ds, eval_ds, meta = load_shared_datasets(shared_reference)
        data = PreferenceData(train=[], eval=[], probes=[tuple(p) for p in meta["probes"]],
                              conversational=meta["conversational"], dropped=meta.get("dropped", {}),
                              description=f"{meta['description']} (shared reference {meta['key']})")
        spec = spec.model_copy(deep=True)
        spec.dpo.precompute_ref_log_probs = True  # read from the dataset columns, never recomputed
    else:
        meta = {}
        data = data or load_preference_data(spec.data, tokenizer, spec.dpo.max_length, spec.dpo.truncation_mode)
        train_ds, eval_ds = datasets.Dataset.from_list(data.train), datasets.Dataset.from_list(data.eval)
    if data.dropped:
        log(f"[trial] {data.dropped_text()}")
    log(f"[trial] data: {data.description}; {train_ds.num_rows} train / {eval_ds.num_rows} eval pairs; "
        f"device {device}")

    from trainables.generation import build_generation_eval

    generation = build_generation_eval(spec, tokenizer, data.eval_full, data.conversational, device, log=log,
                                       shared=meta.get("generation") if shared_reference else None)
    clock.end("data")
    callback = ReportCallback(report, spec, data.probes, tokenizer, log=log, generation=generation, clock=clock)
    if shared_reference and meta.get("probe_reference"):  # the reference's probe answers, made once per sweep
        callback.reference = dict(meta["probe_reference"])
    clock.begin("trainer_init")  # tokenization and the reference log-probs, unless the shared reference has them
    trainer = SweepDPOTrainer(
        model=model,
        args=build_dpo_config(spec, device),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(spec.lora),
        callbacks=[callback],
    )
    clock.end("trainer_init")
    trainer.clock = clock
    trainer.divergence = callback.divergence
    trainer.remove_callback(PrinterCallback)  # it prints every raw log dict; `report` is the output
    callback.tokens_per_step = tokens_per_step(trainer.train_dataset, spec)
    from trainables.model import resolve_compute_dtype

    callback.compute = f"{resolve_compute_dtype(spec.model.compute_dtype, device)} on {device.type}"
    return trainer, data, callback


def row_lengths(dataset, max_length: int):
    """(chosen, rejected): the tokens of each row DPO forwards, the prompt with the chosen completion and the
    prompt with the rejected one, each cut at max_length, as two numpy arrays with one entry per pair."""
    import numpy as np
    import pyarrow.compute as pc

    # Lengths straight from the Arrow columns: no token list is copied into Python at every trial's start.
    columns = dataset.with_format("arrow")  # rows as selected (indices honoured), columns as Arrow arrays
    prompt, chosen, rejected = (pc.list_value_length(columns[c]).to_numpy(zero_copy_only=False)
                                for c in ("prompt_ids", "chosen_ids", "rejected_ids"))
    return np.minimum(prompt + chosen, max_length), np.minimum(prompt + rejected, max_length)


def tokens_per_step(dataset, spec: TrialSpec) -> float:
    """Tokens one optimizer step forwards: the effective batch times the mean pair (`row_lengths`)."""
    chosen, rejected = row_lengths(dataset, spec.dpo.max_length)
    batch = spec.dpo.per_device_train_batch_size * spec.dpo.gradient_accumulation_steps
    return float(batch * (chosen + rejected).mean()) if len(chosen) else 0.0


