"""How much GPU memory one trial needs, from the model's config alone (nothing is loaded).

    python -c "from trainables.memory import *; from trainables.config import TrialSpec; \\
print(estimate_trial_memory(TrialSpec()).describe())"

Parts, in bytes:
- weights: every linear layer but the LM head at the quantized size - NF4/FP4: 4 bits per weight
  plus one absmax per 64-weight block (1 byte with double quantization, else 4); int8: 1 byte plus
  a 4-byte scale per output row; none: the compute dtype - and everything else (embeddings, LM
  head, norms) in the compute dtype. The module list comes from the config built on the meta device,
  so any architecture transformers knows is counted as it will be loaded.
- adapter: LoRA A and B of every targeted layer, r x (in + out) values, in bf16 for a quantized base
  (TRL casts them) else fp32, times 4: weights, gradients and AdamW's two moments.
- activations: what autograd keeps for the backward pass, per token of the 2 x batch x max_length
  tokens DPO runs at once (chosen and rejected rows). Fitted to tensors saved by real TRL DPO steps
  on Llama-shaped models (hidden, intermediate, layers, heads, LoRA rank varied one at a time; the
  vocabulary does not matter - TRL's fused LM head keeps no logits):
      per layer: compute-dtype bytes x (10 hidden + 4 intermediate + 10 r) + 4 bytes x heads
      once:      compute-dtype bytes x hidden + 13
  With gradient checkpointing: one layer's worth plus each layer's input (compute-dtype x hidden).
- context: the CUDA context and allocator slack of a process, which `max_memory_allocated` does
  not see but a packed GPU must hold once per trial (~0.5 GiB measured on H100s with torch 2.x).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainables.config import TrialSpec

GIB = 1024**3
BLOCK = 64  # bitsandbytes 4-bit block size
CONTEXT_BYTES = int(0.5 * GIB)
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    adapter: int
    activations: int
    context: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.context

    @property
    def allocated(self) -> int:
        """What torch.cuda.max_memory_allocated would see: everything but the CUDA context."""
        return self.total - self.context

    def describe(self) -> str:
        gib = {k: getattr(self, k) / GIB for k in ("weights", "adapter", "activations", "context")}
        return (f"{self.total / GIB:.2f} GiB (weights {gib['weights']:.2f}, adapter + optimizer "
                f"{gib['adapter']:.3f}, activations {gib['activations']:.2f}, CUDA context {gib['context']:.2f})")


def _meta_model(model_path: str, trust_remote_code: bool = False):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return model, config


def _linear_layers(model):
    import torch

    head = model.get_output_embeddings()
    return [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]


def quantized_linear_bytes(in_features: int, out_features: int, quantization: str, double_quant: bool,
                           dtype_bytes: int) -> int:
    n = in_features * out_features
    if quantization in ("nf4", "fp4"):
        blocks = -(-n // BLOCK)
        return n // 2 + blocks * (1 if double_quant else 4) + (4 * -(-blocks // 256) if double_quant else 0)
    if quantization == "int8":
        return n + 4 * out_features
    return n * dtype_bytes


def lora_targets(model, target_modules) -> list:
    layers = _linear_layers(model)
    if target_modules == "all-linear":
        return [m for _, m in layers]
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    return [m for name, m in layers if name.split(".")[-1] in names]


def activation_bytes_per_token(config, lora_r: int, dtype_bytes: int, checkpointing: bool = False) -> int:
    """With gradient checkpointing only each layer's input is kept, and one layer's activations live
    at a time while it is recomputed in the backward pass."""
    text = config.get_text_config()
    per_layer = dtype_bytes * (10 * text.hidden_size + 4 * text.intermediate_size + 10 * lora_r) \
        + 4 * text.num_attention_heads
    once = dtype_bytes * text.hidden_size + 13
    if checkpointing:
        return text.num_hidden_layers * dtype_bytes * text.hidden_size + per_layer + once
    return text.num_hidden_layers * per_layer + once


def estimate_trial_memory(spec: TrialSpec, model_path: str | None = None, batch_size: int | None = None,
                          seq_len: int | None = None) -> MemoryEstimate:
    """Peak GPU memory of one trial. `seq_len` defaults to max_length (the worst case: batches are
    padded to their longest pair, at most max_length)."""
    from trainables.model import resolve_model_path

    path = model_path or resolve_model_path(spec.model, spec.cache_dir, log=None)
    model, config = _meta_model(path, spec.model.trust_remote_code)
    # The estimate is of GPU memory: 'auto' is what a GPU would pick (bf16 on anything recent).
    dtype = "bfloat16" if spec.model.compute_dtype == "auto" else spec.model.compute_dtype
    dtype_bytes = DTYPE_BYTES[dtype]
    q = spec.model.quantization

    linear_ids = set()
    weights = 0
    for _, layer in _linear_layers(model):
        linear_ids.add(id(layer.weight))
        weights += quantized_linear_bytes(layer.in_features, layer.out_features, q, spec.model.double_quant,
                                          dtype_bytes)
        if layer.bias is not None:
            linear_ids.add(id(layer.bias))
            weights += layer.bias.numel() * dtype_bytes
    seen = set(linear_ids)
    for p in model.parameters():  # embeddings, LM head, norms (tied weights counted once)
        if id(p) not in seen:
            seen.add(id(p))
            weights += p.numel() * dtype_bytes

    r = spec.lora.r
    lora_params = sum(r * (m.in_features + m.out_features) for m in lora_targets(model, spec.lora.target_modules))
    adapter_dtype_bytes = 2 if q != "none" else 4
    adapter = lora_params * adapter_dtype_bytes * 4

    tokens = 2 * (batch_size or spec.dpo.per_device_train_batch_size) * (seq_len or spec.dpo.max_length)
    activations = tokens * activation_bytes_per_token(config, r, dtype_bytes, spec.dpo.gradient_checkpointing)
    return MemoryEstimate(weights=weights, adapter=adapter, activations=activations, context=CONTEXT_BYTES)


def trials_per_gpu(estimate: MemoryEstimate, gpu_bytes: int, headroom: float) -> int:
    """How many trials fit one GPU, keeping `headroom` of it free."""
    return int(gpu_bytes * (1 - headroom) // estimate.total)
