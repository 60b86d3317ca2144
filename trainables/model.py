"""Base model loading (4-bit by bitsandbytes), the LoRA adapter config, and the trial's device.

    python -c "from trainables.model import *; from trainables.config import ModelSettings; \\
m, t = load_base_model(ModelSettings()); print(type(m.model.layers[0].mlp.up_proj))"

A trial uses exactly one device: CUDA device 0 of the devices it can see (Ray
sets CUDA_VISIBLE_DEVICES to the GPU it assigned), else the CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainables.config import LoraSettings, ModelSettings
from trainables.tiny_model import NAME as TINY_LLAMA
from trainables.tiny_model import ensure_tiny_llama

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def trial_device() -> torch.device:
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def resolve_compute_dtype(name: str, device: torch.device | None = None) -> str:
    """'auto' -> the dtype that suits the device; an explicit name is kept.

    CUDA: bfloat16 where the GPU supports it (Ampere and newer), else float16. CPU: bfloat16 where
    the CPU has bf16 instructions (AVX512-BF16 or AMX), else float32. Measured on a 2-core AVX512-BF16
    CPU with smollm2-135m in NF4 (benchmarks/real_model_step.py): bf16 about 2x faster a step than
    fp32, with the same base answer quality. Without those instructions bf16 is emulated; a machine
    of this pool once measured >70 s a step in bf16 against ~24 s in fp32, most likely for that
    reason (not reproduced here: no such CPU at hand), hence fp32 there.
    """
    if name != "auto":
        return name
    device = device or trial_device()
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_bf16() else "float32"


def cpu_has_bf16() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_model_path(settings: ModelSettings, cache_dir: str | None = None, log=print) -> str:
    """A directory `from_pretrained` can load, or a hub id.

    'tiny-llama' -> its cached directory (built once); 'smollm2-135m' and a `.gguf` file -> the cached
    conversion of the GGUF file (once per file content); a local directory -> its absolute path;
    anything else is a hub id, checked to be loadable now (`check_hub_model`), not once a trial has started."""
    from trainables.gguf_models import SMOLLM2, ModelUnavailable, ensure_converted, is_gguf, smollm2_gguf_path

    if settings.name_or_path == TINY_LLAMA:
        return str(ensure_tiny_llama(cache_dir, log=log))
    if settings.name_or_path == SMOLLM2:
        return str(ensure_converted(smollm2_gguf_path(), cache_dir, log=log))
    if is_gguf(settings.name_or_path):
        return str(ensure_converted(settings.name_or_path, cache_dir, log=log))
    local = Path(settings.name_or_path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelUnavailable(
                f"model.name_or_path: {str(local)!r} exists but has no config.json; point it at a directory "
                "written by save_pretrained, or use a Hugging Face model id"
            )
        return str(local.resolve())
    looks_local = settings.name_or_path.startswith((".", "/", "~")) or settings.name_or_path.count("/") > 1
    if looks_local:
        raise ModelUnavailable(
            f"model.name_or_path: directory {settings.name_or_path!r} does not exist; "
            "give an existing directory or a Hugging Face id such as 'Qwen/Qwen2.5-0.5B'"
        )
    check_hub_model(settings.name_or_path, settings.revision)
    return settings.name_or_path


HUB_FIXES = ("give a local directory written by save_pretrained, or fill the Hugging Face cache on a machine that "
             "reaches the hub (`hf download ID`) and run with HF_HUB_OFFLINE=1")


def check_hub_model(model_id: str, revision: str | None = None, timeout_s: float = 10) -> None:
    """A hub id loads from the local Hugging Face cache, or the hub answers for it; else ModelUnavailable
    naming why (offline, a typo, a private or gated repo, no such revision) and the fix."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from trainables.gguf_models import ModelUnavailable

    where = f"{model_id!r}" + (f" (revision {revision!r})" if revision else "")
    if isinstance(try_to_load_from_cache(model_id, "config.json", revision=revision), str):
        return
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailable(f"model.name_or_path: {where} is not in the Hugging Face cache "
                               f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set; {HUB_FIXES}")
    try:
        HfApi().model_info(model_id, revision=revision, timeout=timeout_s)
    except GatedRepoError:
        raise ModelUnavailable(f"model.name_or_path: {where} is a gated repo; accept its terms on the hub and set "
                               "HF_TOKEN (or `hf auth login`), or " + HUB_FIXES) from None
    except RevisionNotFoundError:
        raise ModelUnavailable(f"model.name_or_path: {where}: the hub has no such revision; fix model.revision") \
            from None
    except RepositoryNotFoundError:
        raise ModelUnavailable(f"model.name_or_path: the hub has no model {model_id!r} that this account can read: a "
                               "typo, or a private repo (set HF_TOKEN); or " + HUB_FIXES) from None
    except Exception as e:  # noqa: BLE001 - no network, DNS, proxy, timeout: the hub cannot be asked
        raise ModelUnavailable(f"model.name_or_path: {where} is not in the Hugging Face cache and the hub cannot "
                               f"be reached ({type(e).__name__}); {HUB_FIXES}") from None


def quantization_config(settings: ModelSettings, device: torch.device | None = None):
    """The one place a ModelSettings becomes a BitsAndBytesConfig (None for quantization 'none')."""
    from transformers import BitsAndBytesConfig

    if settings.quantization == "none":
        return None
    if settings.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings.quantization,
        bnb_4bit_use_double_quant=settings.double_quant,
        bnb_4bit_compute_dtype=DTYPES[resolve_compute_dtype(settings.compute_dtype, device)],
    )


def lora_config(settings: LoraSettings):
    """The one place a LoraSettings becomes a peft LoraConfig."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
        bias="none",
    )


def load_tokenizer(path: str, settings: ModelSettings):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, revision=settings.revision, trust_remote_code=settings.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(settings: ModelSettings, cache_dir: str | None = None, device: torch.device | None = None,
                    log=print, path: str | None = None):
    """(model, tokenizer): the frozen base model on `device`, quantized as `settings` say. `path`: what
    `resolve_model_path` already returned for `settings`, when the caller has it (a GGUF file is hashed there)."""
    from transformers import AutoModelForCausalLM

    path = path or resolve_model_path(settings, cache_dir, log=log)
    device = device or trial_device()
    model = AutoModelForCausalLM.from_pretrained(
        path,
        revision=settings.revision,
        quantization_config=quantization_config(settings, device),
        dtype=DTYPES[resolve_compute_dtype(settings.compute_dtype, device)],
        device_map={"": device.index if device.type == "cuda" else "cpu"},
        trust_remote_code=settings.trust_remote_code,
        # transformers >= 5.2x kernelizes by default when `kernels` (its own requirement) is installed: on CUDA
        # that fetches kernels from the hub, which failed the first GPU run offline (deploy/gpu/README.md).
        use_kernels=settings.hub_kernels,
    )
    keep_4bit_weights_trainable(model)
    return model, load_tokenizer(path, settings)


def keep_4bit_weights_trainable(model) -> int:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights; returns the layers touched.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit weight for its inference
    kernel the first time the layer runs in eval mode without grad (an evaluation, a generate) and
    does not unpack it on train(). That kernel has no backward, so every later training step
    back-propagated wrong gradients through the base layers (torch warns "gemv_4bit: an autograd
    kernel was not registered"). Evaluation stays on the regular 4-bit path instead.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)
