"""Every private name of another library that dpo-sweep relies on, in one list.

Private names change without notice between releases. tests/test_private_apis.py imports each one at the
installed versions and checks its parameters (for a callable) or that an instance carries it (for an
attribute), so an upgrade that moves one fails there, by name, instead of deep inside a sweep.

Each entry: (module, dotted name inside it, the parameters a callable must take in this order - None for
an attribute or a value - and where dpo-sweep uses it).
"""

from __future__ import annotations

PRIVATE_APIS: list[tuple[str, str, tuple[str, ...] | None, str]] = [
    # Ray Tune: synchronous successive halving is HyperBand with one bracket for the whole sweep.
    ("ray.tune.schedulers.hyperband", "_Bracket.__init__",
     ("self", "time_attr", "max_trials", "init_t_attr", "max_t_attr", "eta", "s"), "orchestrator/schedulers.py"),
    ("ray.tune.schedulers.hyperband", "_Bracket.cur_iter_done", ("self",), "orchestrator/schedulers.py"),
    ("ray.tune.schedulers.hyperband", "_Bracket.successive_halving", ("self", "metric", "metric_op"),
     "orchestrator/schedulers.py"),
    ("ray.tune.schedulers.hyperband", "_Bracket.add_trial", ("self", "trial"), "orchestrator/schedulers.py"),
    ("ray.tune.schedulers.hyperband", "_Bracket()._all_trials", None, "orchestrator/schedulers.py"),
    ("ray.tune.schedulers.hyperband", "_Bracket()._live_trials", None, "orchestrator/schedulers.py"),
    ("ray.tune.schedulers.hyperband", "_Bracket()._n", None, "orchestrator/schedulers.py (resume)"),
    ("ray.tune.schedulers", "HyperBandScheduler()._state", None, "orchestrator/schedulers.py"),
    ("ray.tune.schedulers", "HyperBandScheduler()._time_attr", None, "orchestrator/schedulers.py (resume)"),
    ("ray.tune.schedulers", "HyperBandScheduler()._max_t_attr", None, "orchestrator/schedulers.py"),
    ("ray.tune.schedulers", "HyperBandScheduler()._num_stopped", None, "orchestrator/schedulers.py (resume)"),
    ("ray.tune.schedulers", "HyperBandScheduler()._hyperbands", None, "orchestrator/schedulers.py"),
    ("ray.tune.schedulers", "HyperBandScheduler()._trial_info", None, "orchestrator/schedulers.py"),
    ("ray.tune.schedulers", "HyperBandScheduler()._metric_op", None, "orchestrator/schedulers.py"),
    ("ray.tune.schedulers", "ASHAScheduler()._trial_info", None, "orchestrator/schedulers.py (GuardedASHA)"),
    ("ray.tune.schedulers", "ASHAScheduler()._num_stopped", None, "orchestrator/schedulers.py (GuardedASHA)"),
    ("ray.tune.schedulers.async_hyperband", "_Bracket()._rungs", None, "orchestrator/schedulers.py (GuardedASHA)"),
    # TRL: which positions the fused LM head projects, and the steps a shared reference skips.
    ("trl.trainer.utils", "_use_triton", ("device",), "trainables/trainer.py"),
    ("trl", "DPOTrainer._prepare_dataset", ("self", "dataset", "processing_class", "args", "dataset_name"),
     "trainables/trainer.py"),
    ("trl", "DPOTrainer._precompute_ref_logps", ("self", "dataset", "name", "batch_size"), "trainables/trainer.py"),
    # transformers' Trainer: checkpoint save and restore, timed and dtype-kept.
    ("transformers", "Trainer._load_from_checkpoint", ("self", "resume_from_checkpoint", "model"),
     "trainables/trainer.py"),
    ("transformers", "Trainer._load_optimizer_and_scheduler", ("self", "checkpoint"), "trainables/trainer.py"),
    ("transformers", "Trainer._save_checkpoint", ("self", "model", "trial"), "trainables/trainer.py"),
    # transformers: the input-gradient hook TRL adds with gradient checkpointing, which a resident model sheds
    # (trainables/resident.py checks after every trial that no `_require_grads_hook` is left).
    ("transformers", "PreTrainedModel.enable_input_require_grads", ("self",), "trainables/resident.py"),
    ("transformers", "PreTrainedModel.disable_input_require_grads", ("self",), "trainables/resident.py"),
    # torch: whether the CPU has bf16 instructions (compute_dtype: auto).
    ("torch.cpu", "_is_avx512_bf16_supported", (), "trainables/model.py"),
    ("torch.cpu", "_is_amx_tile_supported", (), "trainables/model.py"),
    # bitsandbytes: the CPU inference repacking switched off (its kernel has no backward).
    ("bitsandbytes.nn", "Linear4bit()support_avx512bf16_for_cpu", None, "trainables/model.py"),
    # gguf: which tensor types a GGUF file may hold and be dequantized.
    ("gguf.quants", "_type_traits", None, "trainables/gguf_models.py"),
]
