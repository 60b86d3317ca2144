"""The base model stays loaded in a worker between the trials it runs.

Loading (and converting, and quantizing) the base model is paid once per worker process, not once per
trial and per resume: Ray Tune reuses its actors between trials (`reuse_actors`), and this module keeps the
last model a trial used, keyed by everything that decides its weights - the resolved path, revision,
quantization, double quantization, compute dtype, device and remote-code and kernel switches. A trial with
the same key takes the resident model; any other key frees it and loads its own.

A trial changes the model it is given in place, and `strip_trial` undoes each change before the model is
handed to the next trial:
- peft's LoRA layers (TRL's `get_peft_model`): `unload()` puts the original layers back, and deletes the
  `peft_config` it wrote on the model;
- TRL's fused LM head: an instance `forward` over the class's own;
- gradient checkpointing and the input-gradient hook that goes with it (TRL, transformers' Trainer).
What is left is checked (no adapter layer, no instance forward, no hook, every base weight frozen): a model
that does not come back clean is dropped and the next trial loads afresh, never trains on a used one.

The base weights are frozen and never written, so a fresh adapter on the resident model is the same as one
on a fresh load (TRL seeds before creating it): tests/test_resident.py checks it to the bit.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

from trainables.config import ModelSettings


@dataclass
class _Resident:
    key: tuple
    model: Any
    tokenizer: Any


_resident: _Resident | None = None
loads = 0  # models this process has loaded through `acquire` (tests and the worker's log read it)


def model_key(settings: ModelSettings, path: str, device) -> tuple:
    from trainables.model import resolve_compute_dtype

    return (path, settings.revision, settings.quantization, settings.double_quant,
            resolve_compute_dtype(settings.compute_dtype, device), str(device), settings.trust_remote_code,
            settings.hub_kernels)


def acquire(settings: ModelSettings, cache_dir: str | None, device, log=print) -> tuple[Any, Any, bool]:
    """(model, tokenizer, reused): the resident base model when its key matches, else a fresh load that
    becomes the resident one. Hand it back with `strip_trial` when the trial ends."""
    global _resident, loads
    from trainables.model import load_base_model, resolve_model_path

    path = resolve_model_path(settings, cache_dir, log=log)
    key = model_key(settings, path, device)
    if _resident is not None and _resident.key == key:
        return _resident.model, _resident.tokenizer, True
    if _resident is not None:
        log("[trial] the resident base model has other model settings: freeing it and loading this trial's")
        drop()
    model, tokenizer = load_base_model(settings, cache_dir, device=device, log=log, path=path)
    model.requires_grad_(False)  # as peft leaves it: frozen (the check in `strip_trial` relies on it)
    loads += 1
    _resident = _Resident(key, model, tokenizer)
    return model, tokenizer, False


def strip_trial(trained_model, log=print) -> None:
    """Return the resident model to its loaded state after a trial (see the module doc); drop it if it
    does not come back clean. `trained_model`: what the trainer held (the peft model, or the base model)."""
    global _resident
    if _resident is None:
        return
    try:
        base = _unwrap(trained_model) if trained_model is not None else _resident.model
        if base is not _resident.model:
            raise RuntimeError("the trainer's model is not the resident one")
        _undo_trial_changes(base)
        left = leftovers(base)
        if left:
            raise RuntimeError("; ".join(left))
    except Exception as e:  # noqa: BLE001 - never reuse a model in an unknown state: load afresh next time
        log(f"[trial] the base model could not be returned to its loaded state ({e}); the next trial loads it "
            "again")
        _resident = None
    free_memory()


def _unwrap(model):
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.unload()  # the base model, LoRA layers replaced by the originals
    return model


def _undo_trial_changes(model) -> None:
    model.__dict__.pop("forward", None)  # TRL's fused LM head (trl.trainer.utils.add_fused_lm_head)
    if getattr(model, "is_gradient_checkpointing", False):
        # transformers 5.2x renames it activation_checkpointing_disable and warns on the old name
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    if hasattr(model, "_require_grads_hook"):
        model.disable_input_require_grads()
    model.eval()


def leftovers(model) -> list[str]:
    """What a trial left on the model: empty for a model as loaded."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found = []
    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        found.append("adapter layers left in the model")
    if "forward" in model.__dict__:
        found.append("an instance forward over the model's own")
    if hasattr(model, "_require_grads_hook") or getattr(model, "is_gradient_checkpointing", False):
        found.append("gradient checkpointing or its input hook left on")
    if hasattr(model, "peft_config"):
        found.append("a peft_config left on the model")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if trainable:
        found.append(f"{len(trainable)} base parameter(s) trainable, e.g. {trainable[0]}")
    return found


def drop() -> None:
    """Forget the resident model (a fault, other model settings, a test) and free what it held."""
    global _resident
    _resident = None
    free_memory()


def free_memory() -> None:
    """Collect what a finished trial held (optimizer state, activations, the trainer) and, on a GPU, give
    the cached blocks back so the next trial's memory estimate holds."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
