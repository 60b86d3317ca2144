"""Answer quality: greedy answers to clean probe prompts, scored against the known right answers.

Pair accuracy alone hides the worst failure of an over-driven DPO run: greedy
answers destroyed while the clean pairs still rank right. This scores what the
model actually says.
"""

from __future__ import annotations

import torch

from trainables.synthetic import score_answer


@torch.no_grad()
def answer_quality(model, tokenizer, probes: list[tuple[str, str]], batch_size: int = 64,
                   max_new_tokens: int = 10) -> dict[str, float]:
    """{'answer_exact_rate', 'answer_valid_rate'} over the probes (greedy decoding, left padding)."""
    if not probes:
        return {}
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(p for p in model.parameters()).device
    exact = valid = 0
    try:
        for start in range(0, len(probes), batch_size):
            chunk = probes[start : start + batch_size]
            enc = tokenizer([p for p, _ in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for text, (_, right) in zip(texts, chunk, strict=True):
                e, v = score_answer(text.split("\n")[0], right)
                exact += e
                valid += v
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    n = len(probes)
    return {"answer_exact_rate": exact / n, "answer_valid_rate": valid / n}
