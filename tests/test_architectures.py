"""Every common architecture trains through a real NF4 + LoRA DPO trial on the CPU, with the default compute
dtype and with bf16, and `target_modules: all-linear` puts LoRA on the layers a user expects of it."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.tiny_model import ARCHITECTURES, ensure_tiny_architecture
from trainables.trainer import build_trainer
from trainables.trial import run_trial

# Per decoder layer: the linear layers all-linear adapts (every linear but the LM head).
EXPECTED = {
    "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "mistral": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gemma2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},  # fused projections
}


def quiet(*_):
    pass


def _spec(make_spec, arch, model_cache, name, **model):
    path = ensure_tiny_architecture(arch, model_cache)
    return make_spec(name, model={"name_or_path": str(path), **model},
                     data={"synthetic": {"num_train": 64, "num_eval": 32, "num_probe": 8}},
                     dpo={"reports_per_epoch": 2, "learning_rate": 5e-3})


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_all_linear_targets_the_layers_a_user_expects(arch, make_spec, model_cache):
    trainer, _, _ = build_trainer(_spec(make_spec, arch, model_cache, f"{arch}-targets"), lambda m, c: None,
                                  log=quiet)
    adapted = {name.split(".")[-1] for name, module in trainer.model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == EXPECTED[arch]
    per_layer = [n for n, m in trainer.model.named_modules() if hasattr(m, "lora_A") and ".layers.0." in n]
    assert len(per_layer) == len(EXPECTED[arch])
    if arch == "qwen2":  # its q/k/v biases stay, frozen, beside the 4-bit weights
        q = next(m for n, m in trainer.model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
        assert q.base_layer.bias is not None and not q.base_layer.bias.requires_grad


@pytest.mark.parametrize("compute_dtype", ["auto", "bfloat16"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_an_nf4_lora_dpo_trial_trains(arch, compute_dtype, make_spec, model_cache):
    reports = []
    spec = _spec(make_spec, arch, model_cache, f"{arch}-{compute_dtype}", compute_dtype=compute_dtype)
    run_trial(spec, lambda m, c: reports.append(m), log=quiet)
    assert [m["step"] for m in reports] == [2, 4]
    for m in reports:
        for key in ("eval_loss", "train_loss", "eval_rewards_accuracies", "eval_abs_logratio"):
            assert math.isfinite(m[key]), (key, m[key])
    # The policy moved away from the reference: the adapter trained (LoRA B starts at zero).
    assert reports[-1]["eval_abs_logratio"] > 0
    assert reports[-1]["compute"].startswith("bfloat16" if compute_dtype == "bfloat16" else "")
    assert torch.isfinite(torch.tensor(reports[-1]["eval_loss"]))
