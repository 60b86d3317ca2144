"""The GPU memory estimate, part by part, against the tensors of a really loaded tiny model; packing."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from conftest import small_sweep

from orchestrator.config import validate_sweep_config
from orchestrator.preflight import GIB, plan_gpu_packing
from trainables.config import ModelSettings
from trainables.memory import estimate_trial_memory
from trainables.model import load_base_model
from trainables.trainer import build_trainer


def quiet(*_):
    pass


@pytest.mark.parametrize(("quantization", "double_quant"), [("nf4", True), ("nf4", False), ("fp4", True),
                                                            ("int8", False), ("none", False)])
def test_weights_match_the_loaded_tensors(make_spec, model_cache, quantization, double_quant):
    spec = make_spec(model={"quantization": quantization, "double_quant": double_quant})
    model, _ = load_base_model(ModelSettings(quantization=quantization, double_quant=double_quant), model_cache,
                               log=None)
    actual = 0
    for p in model.parameters():
        actual += p.numel() * p.element_size()
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            actual += qs.absmax.numel() * qs.absmax.element_size()
            if qs.nested:
                actual += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
    for m in model.modules():  # int8 keeps one fp32 scale per output row
        if isinstance(m, bnb.nn.Linear8bitLt) and m.weight.SCB is not None:
            actual += m.weight.SCB.numel() * m.weight.SCB.element_size()
    assert estimate_trial_memory(spec).weights == actual


def test_adapter_and_optimizer_state_match_a_real_step(make_spec):
    spec = make_spec(dpo={"reports_per_epoch": 1})
    trainer, _, _ = build_trainer(spec, lambda m, c: None, log=quiet)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(model, batch).backward()
    trainer.optimizer.step()
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    actual = sum(p.numel() * p.element_size() + p.grad.numel() * p.grad.element_size() for p in lora)
    actual += sum(t.numel() * t.element_size() for p in lora for t in trainer.optimizer.state[p].values()
                  if torch.is_tensor(t) and t.dim() > 0)
    assert estimate_trial_memory(spec).adapter == actual


@pytest.mark.parametrize("overrides", [{}, {"lora": {"r": 32}}, {"dpo": {"per_device_train_batch_size": 4}}])
def test_activations_match_what_autograd_saves(make_spec, overrides):
    spec = make_spec(**overrides)
    trainer, _, _ = build_trainer(spec, lambda m, c: None, log=quiet)
    model = trainer.model
    model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = max(saved.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        trainer.compute_loss(model, batch)
    rows, seq = batch["input_ids"].shape
    est = estimate_trial_memory(spec, batch_size=rows // 2, seq_len=seq)
    assert est.activations == pytest.approx(sum(saved.values()), rel=0.10)


def packing_config(model_cache, **resources):
    return validate_sweep_config(small_sweep(model_cache, "unused", resources=resources))


def test_auto_packs_as_many_trials_as_fit(model_cache):
    cfg = packing_config(model_cache, gpu_per_trial="auto", max_trials_per_gpu=64)
    est = estimate_trial_memory(cfg.trial)
    gpu, problems, notes = plan_gpu_packing(cfg, {}, 8 * est.total)
    # 8 trials' worth of memory, 15 % kept free: 6 fit.
    assert not problems and gpu == pytest.approx(1 / 6) and "6 trial(s) per GPU" in notes[0]
    gpu, _, _ = plan_gpu_packing(packing_config(model_cache, gpu_per_trial="auto", max_trials_per_gpu=4), {},
                                 8 * est.total)
    assert gpu == pytest.approx(1 / 4)


def test_a_packing_that_cannot_fit_is_refused(model_cache):
    est = estimate_trial_memory(packing_config(model_cache).trial)
    _, problems, _ = plan_gpu_packing(packing_config(model_cache, gpu_per_trial="auto"), {}, est.total // 2)
    assert "one trial needs about" in problems[0] and "lower per_device_train_batch_size or max_length" in problems[0]
    _, problems, _ = plan_gpu_packing(packing_config(model_cache, gpu_per_trial=0.125), {}, 4 * est.total)
    assert "0.125 packs 8 trials per GPU" in problems[0]
    _, problems, _ = plan_gpu_packing(packing_config(model_cache, gpu_per_trial="auto"), {}, None)
    assert "set resources.gpu_memory_gib" in problems[0]
    # The worst case of the space counts: a larger batch in the grid needs more memory.
    cfg = packing_config(model_cache, gpu_per_trial=0.5)
    fits_default = 3 * est.total
    assert not plan_gpu_packing(cfg, {}, fits_default)[1]
    big = {"per_device_train_batch_size": {"grid_search": [16, 4096]}}
    assert plan_gpu_packing(cfg, big, fits_default)[1]


def test_estimate_of_a_real_size_model_is_plausible(tmp_path):
    """A Qwen2-0.5B-shaped config (the DESIGN anchors' model), built on the meta device only."""
    from transformers import Qwen2Config

    from trainables.config import TrialSpec

    Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True).save_pretrained(tmp_path)
    spec = TrialSpec.model_validate({"model": {"name_or_path": str(tmp_path)}, "dpo": {"per_device_train_batch_size": 8,
                                                                                         "max_length": 512}})
    est = estimate_trial_memory(spec)
    # 0.36 B linear weights at ~0.53 byte + 0.14 B tied embedding in bf16: ~0.45 GB of weights.
    assert 0.3 * GIB < est.weights < 0.6 * GIB
    assert est.adapter < 0.1 * GIB  # r=8 on every linear layer: ~4.4 M values x 2 bytes x 4
    # 8 x 2 x 512 tokens; per token and layer ~57 KB - the same order as the 34 x hidden bytes of
    # Korthikanti et al. (2022) for a transformer layer with a 4 x hidden MLP (this MLP is 5.4 x).
    per_token_layer = est.activations / (8 * 2 * 512 * 24)
    assert 34 * 896 < per_token_layer < 3 * 34 * 896
    spec.dpo.gradient_checkpointing = True
    assert estimate_trial_memory(spec).activations < est.activations / 10
