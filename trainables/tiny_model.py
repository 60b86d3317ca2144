"""`tiny-llama`: the built-in base model of the offline demo, the tests and the benchmarks.

A Llama-style config (no linear biases, so bitsandbytes' CPU 4-bit path works),
random init from a seed, a character-level tokenizer built locally, then a short
supervised warm start on the synthetic task's format. Built once per seed and
cached; no network is touched.

    python -m trainables.tiny_model            # build (or find) it and print its path

Sizes: hidden 64, 2 layers, 4 heads, vocab ~100 characters -> ~0.2 M parameters;
the warm start (600 steps of batch 64) takes well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trainables.cache import built_atomically, cache_root
from trainables.synthetic import warm_start_examples

NAME = "tiny-llama"
# Bump when the recipe below changes, so stale caches are not reused.
RECIPE_VERSION = 1
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]
# A role-prefixed chat template, for conversational datasets. The prompt rendered
# with add_generation_prompt is a prefix of prompt + reply, as TRL needs.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
WARM_START = {"examples": 4000, "steps": 600, "batch_size": 64, "learning_rate": 3e-3}


def build_tokenizer():
    """A character tokenizer: every character one token, so no token spans the prompt/answer boundary."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def warm_start(model, tokenizer, seed: int, log=print) -> float:
    """Supervised pass on the task format (answer tokens only); returns the last loss."""
    examples = warm_start_examples(WARM_START["examples"], seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=WARM_START["learning_rate"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, WARM_START["learning_rate"], total_steps=WARM_START["steps"])
    model.train()
    loss_value = float("nan")
    for step in range(WARM_START["steps"]):
        idx = torch.randint(len(examples), (WARM_START["batch_size"],), generator=gen).tolist()
        input_ids, labels = [], []
        for i in idx:
            prompt, answer = examples[i]
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            input_ids.append(p + a)
            labels.append([-100] * len(p) + a)
        width = max(map(len, input_ids))
        pad = tokenizer.pad_token_id
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in input_ids])
        lab = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
        loss = model(input_ids=ids, attention_mask=(lab != -100) | (ids != pad), labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        loss_value = loss.item()
        if log and (step + 1) % 200 == 0:
            log(f"[tiny-llama] warm start step {step + 1}/{WARM_START['steps']} loss {loss_value:.3f}")
    model.eval()
    return loss_value


def ensure_tiny_llama(cache_dir: str | Path | None = None, seed: int = 0, log=print) -> Path:
    """Path of the cached built-in model, building it first if needed (atomic: safe with parallel trials)."""
    root = Path(cache_dir) if cache_dir else cache_root()
    target = root / f"{NAME}-v{RECIPE_VERSION}-seed{seed}"
    if (target / "recipe.json").is_file():
        return target
    if log:
        log(f"[tiny-llama] building the built-in base model (once) in {target}")
    # Another process finishing first leaves an identical copy (same seed, same recipe).
    with built_atomically(target, lambda t: (t / "recipe.json").is_file()) as tmp:
        tokenizer = build_tokenizer()
        model = build_model(tokenizer, seed)
        final_loss = warm_start(model, tokenizer, seed, log=log)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        recipe = {"name": NAME, "recipe_version": RECIPE_VERSION, "seed": seed, "warm_start": WARM_START,
                  "warm_start_final_loss": final_loss}
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2))
    return target


# Tiny random models of other architectures, for the tests that every common one trains (tests/test_architectures.py):
# each family's own config class, the quirk that sets it apart kept (Qwen2's q/k/v biases, Phi-3's fused qkv and
# gate_up projections, Gemma 2's soft-capping and head_dim, Mistral's sliding window), the tiny-llama tokenizer.
ARCHITECTURES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2, "tie_word_embeddings": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"num_key_value_heads": 2, "sliding_window": 32}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"num_key_value_heads": 2, "head_dim": 16,
                                                     "query_pre_attn_scalar": 16}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"num_key_value_heads": 4}),
}


def ensure_tiny_architecture(arch: str, cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """A cached save_pretrained directory of a tiny random model of `arch` (a key of ARCHITECTURES)."""
    import transformers

    config_name, model_name, extra = ARCHITECTURES[arch]
    root = Path(cache_dir) if cache_dir else cache_root()
    target = root / f"tiny-{arch}-v{RECIPE_VERSION}-seed{seed}"
    if (target / "config.json").is_file():
        return target
    with built_atomically(target, lambda t: (t / "config.json").is_file()) as tmp:
        tokenizer = build_tokenizer()
        config = getattr(transformers, config_name)(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **extra)
        torch.manual_seed(seed)
        getattr(transformers, model_name)(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


if __name__ == "__main__":
    print(ensure_tiny_llama())
