"""Answer quality: greedy answers to clean probe prompts, scored against the known right answers.

Pair accuracy alone hides the worst failure of an over-driven DPO run: greedy
answers destroyed while the clean pairs still rank right. This scores what the
model actually says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trainables import arithmetic, synthetic
from trainables.generation import generate, render_prompt

Scorer = Callable[[str, str], tuple[bool, bool]]


def probe_settings(data) -> tuple[Scorer, int]:
    """(scorer, max_new_tokens) of a bundled task (`DataSettings`): enough tokens for a right answer
    plus a margin, so a policy that rambles is seen rambling (its length is reported) without
    paying for long generations."""
    if data.builtin_task == "arithmetic":
        # 'a + b = c' is ~8 tokens; the worked answer ~45 (SmolLM2's tokenizer).
        return arithmetic.score_answer, (64 if data.arithmetic.form == "long" else 16)
    # A synthetic answer is one word of at most 6 characters (one token each) plus a space.
    return synthetic.score_answer, 10


def answer_quality(model, tokenizer, probes: list[tuple[Any, str]], batch_size: int = 64,
                   max_new_tokens: int = 10, score: Scorer = synthetic.score_answer) -> dict[str, float]:
    """{'answer_exact_rate', 'answer_valid_rate', 'answer_length_tokens'} over the probes (greedy decoding,
    `generation.generate`). The length is the mean count of generated tokens up to and including end of turn."""
    if not probes:
        return {}
    answers = generate(model, tokenizer, [render_prompt(tokenizer, p) for p, _ in probes], max_new_tokens,
                       batch_size)
    exact = valid = 0
    for text, (_, right) in zip(answers.texts, probes, strict=True):
        e, v = score(text, right)
        exact += e
        valid += v
    n = len(probes)
    return {"answer_exact_rate": exact / n, "answer_valid_rate": valid / n,
            "answer_length_tokens": sum(len(i) for i in answers.ids) / n}


def sequence_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs, token counts) of each sequence's completion (TRL's collated batch: chosen rows, then
    rejected), through the fused LM head TRL's trainer puts on its model: only the completion's tokens are
    projected, in tiles, as in TRL's own loss. Full logits (rows x tokens x vocabulary, in fp32 for the
    softmax) were 1.5 GiB of SmolLM2's and 5.2 GiB of a Qwen2.5-0.5B's 7 GiB peak on an H200 at an eval batch
    of 64 rows: the largest thing a trial held, and nothing the memory estimate counted."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                fused_lm_head=True, use_cache=False)
    mask = batch["completion_mask"][:, 1:]
    return out.log_probs.float().sum(-1), mask.sum(-1).clamp(min=1)


@torch.no_grad()
def reference_divergence(model, batches, max_pairs: int = 64) -> dict[str, float]:
    """How far the policy's held-out log-probs moved from the reference's, over the first `max_pairs` pairs.

    The reference is the base model with the adapter disabled, as in TRL's PEFT path, or the batch's
    precomputed reference log-probs when it has them (then no reference forward runs). Per pair
    delta(y) = log pi(y|x) - log pi_ref(y|x), summed over the completion's tokens; '_per_token' divides each
    completion's delta by its length first, so the figure means the same on a 5-token answer and a
    300-token one:

        eval_abs_logratio               mean |delta| (nats per completion; chosen and rejected)
        eval_abs_logratio_per_token     mean |delta| / length
        eval_chosen_logratio_per_token  mean delta / length of chosen completions: below 0, the preferred
                                        answers lost probability against the reference (likelihood displacement)
        eval_rejected_logratio_per_token  the same of rejected completions
    """
    was_training = model.training
    model.eval()
    deltas, lengths = [], []
    try:
        for batch in batches:
            policy, n_tokens = sequence_logps(model, batch)
            if "ref_chosen_logps" in batch:
                ref = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]]).to(policy)
            else:
                with model.disable_adapter():
                    ref, _ = sequence_logps(model, batch)
            deltas.append((policy - ref).view(2, -1))  # [chosen, rejected] x pairs
            lengths.append(n_tokens.view(2, -1).to(policy))
            if sum(d.shape[1] for d in deltas) >= max_pairs:
                break
    finally:
        model.train(was_training)
    if not deltas:
        return {}
    delta, length = torch.cat(deltas, 1)[:, :max_pairs], torch.cat(lengths, 1)[:, :max_pairs]
    per_token = delta / length
    return {"eval_abs_logratio": delta.abs().mean().item(),
            "eval_abs_logratio_per_token": per_token.abs().mean().item(),
            "eval_chosen_logratio_per_token": per_token[0].mean().item(),
            "eval_rejected_logratio_per_token": per_token[1].mean().item()}
