"""Model loading: tiny-llama built deterministically and cached; quantization kinds; local dirs and ids."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file

from trainables.config import LoraSettings, ModelSettings
from trainables.model import load_base_model, lora_config, quantization_config, resolve_model_path
from trainables.tiny_model import ensure_tiny_llama


def test_tiny_llama_is_deterministic_for_a_seed_and_built_once(tmp_path, model_cache):
    a = load_file(f"{ensure_tiny_llama(model_cache, log=None)}/model.safetensors")
    built = []
    path = ensure_tiny_llama(tmp_path, log=built.append)
    b = load_file(f"{path}/model.safetensors")
    assert built and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = []
    assert ensure_tiny_llama(tmp_path, log=again.append) == path and again == []  # cached


@pytest.mark.parametrize(
    ("quantization", "layer_type", "quant_type"),
    [("nf4", bnb.nn.Linear4bit, "nf4"), ("fp4", bnb.nn.Linear4bit, "fp4"), ("int8", bnb.nn.Linear8bitLt, None),
     ("none", torch.nn.Linear, None)],
)
def test_quantization_kinds(model_cache, quantization, layer_type, quant_type):
    model, tok = load_base_model(ModelSettings(quantization=quantization), model_cache, log=None)
    proj = model.model.layers[0].mlp.up_proj
    assert type(proj) is layer_type
    if quant_type:
        assert proj.weight.quant_type == quant_type
        assert proj.weight.dtype == torch.uint8  # packed 4-bit
    assert type(model.lm_head) is torch.nn.Linear  # the head stays in full precision
    assert model.device.type == "cpu"
    ids = tok("Q: cat\nA:", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits.float()).all()


def test_nf4_defaults_are_double_quant_and_the_devices_compute_dtype():
    from trainables.model import DTYPES, resolve_compute_dtype

    cfg = quantization_config(ModelSettings())
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_use_double_quant
    assert ModelSettings().compute_dtype == "auto"
    assert cfg.bnb_4bit_compute_dtype == DTYPES[resolve_compute_dtype("auto")]
    assert quantization_config(ModelSettings(compute_dtype="float16")).bnb_4bit_compute_dtype == torch.float16
    assert quantization_config(ModelSettings(quantization="none")) is None


def test_lora_defaults_target_all_linear_layers():
    cfg = lora_config(LoraSettings())
    assert cfg.target_modules == "all-linear" and cfg.r == 8 and cfg.lora_alpha == 16


def test_local_directory_and_hub_id_resolution(tmp_path, model_cache):
    local = ensure_tiny_llama(model_cache, log=None)
    # A local directory is loaded like a hub checkout: the same from_pretrained call.
    settings = ModelSettings(name_or_path=str(local), quantization="nf4")
    assert resolve_model_path(settings) == str(local)
    model, _ = load_base_model(settings, log=None)
    assert isinstance(model.model.layers[1].self_attn.q_proj, bnb.nn.Linear4bit)
    with pytest.raises(FileNotFoundError, match="directory './models/nope' does not exist"):
        resolve_model_path(ModelSettings(name_or_path="./models/nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_model_path(ModelSettings(name_or_path=str(tmp_path / "empty")))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: what a fresh machine without hub access has."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_hub_id_in_the_local_cache_passes_through_to_from_pretrained(hub_cache):
    snapshot = hub_cache / "models--acme--tiny" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (hub_cache / "models--acme--tiny" / "refs").mkdir()
    (hub_cache / "models--acme--tiny" / "refs" / "main").write_text("0123abc")
    assert resolve_model_path(ModelSettings(name_or_path="acme/tiny")) == "acme/tiny"


def test_a_hub_id_that_cannot_load_is_refused_before_any_trial_starts(hub_cache):
    from trainables.config import InputError

    with pytest.raises(InputError) as err:
        resolve_model_path(ModelSettings(name_or_path="acme/tinny"))
    text = str(err.value)
    assert "'acme/tinny' is not in the Hugging Face cache" in text and "HF_HUB_OFFLINE is set" in text
    assert "give a local directory" in text  # the fix


def test_the_base_model_loads_without_hub_kernels_unless_asked(model_cache):
    # transformers kernelizes by default whenever `kernels` is installed (it is one of its own requirements); on
    # CUDA that downloads layers from the hub, which broke every trial of the first GPU run, offline.
    from trainables.config import ModelSettings
    from trainables.model import load_base_model

    # On the CPU whatever the host has: on a GPU, hub_kernels=True would fetch kernels from the hub.
    cpu = torch.device("cpu")
    off, _ = load_base_model(ModelSettings(), cache_dir=model_cache, device=cpu, log=lambda *a: None)
    on, _ = load_base_model(ModelSettings(hub_kernels=True), cache_dir=model_cache, device=cpu, log=lambda *a: None)
    assert (off.use_kernels, on.use_kernels) == (False, True)


def test_a_cache_entry_appears_whole_or_not_at_all(tmp_path):
    from trainables.cache import built_atomically

    target = tmp_path / "entry"
    with pytest.raises(RuntimeError), built_atomically(target, lambda t: (t / "done").is_file()) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("the build failed")
    assert not target.exists() and list(tmp_path.iterdir()) == []  # nothing half-built left behind
    with built_atomically(target, lambda t: (t / "done").is_file()) as tmp:
        (tmp / "done").write_text("1")
    with built_atomically(target, lambda t: (t / "done").is_file()) as tmp:  # another process's copy won
        (tmp / "done").write_text("2")
    assert (target / "done").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
