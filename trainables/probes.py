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


class HeldOutDivergence:
    """How far the policy's held-out log-probs moved from the reference's, over the first `max_pairs` pairs,
    read from TRL's own evaluation pass (`SweepDPOTrainer._compute_loss` hands each batch's summed log-probs
    here): no second forward pass. The reference is the batch's precomputed log-probs, or TRL's reference
    forward with the adapter disabled. Per pair delta(y) = log pi(y|x) - log pi_ref(y|x), summed over the
    completion's tokens; '_per_token' divides each completion's delta by its length first, so the figure means
    the same on a 5-token answer and a 300-token one:

        eval_abs_logratio               mean |delta| (nats per completion; chosen and rejected)
        eval_abs_logratio_per_token     mean |delta| / length
        eval_chosen_logratio_per_token  mean delta / length of chosen completions: below 0, the preferred
                                        answers lost probability against the reference (likelihood displacement)
        eval_rejected_logratio_per_token  the same of rejected completions
    """

    def __init__(self, max_pairs: int = 64):
        self.max_pairs = max_pairs
        self.reset()

    def reset(self) -> None:
        self.deltas: list[torch.Tensor] = []
        self.lengths: list[torch.Tensor] = []

    def add(self, policy: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor) -> None:
        """One collated batch (chosen rows, then rejected): summed log-probs under the policy and the reference,
        and completion lengths in tokens."""
        if sum(d.shape[1] for d in self.deltas) >= self.max_pairs:
            return
        self.deltas.append((policy.float() - ref.to(policy).float()).view(2, -1).cpu())
        self.lengths.append(lengths.view(2, -1).float().cpu())

    def metrics(self) -> dict[str, float]:
        if not self.deltas:
            return {}
        delta = torch.cat(self.deltas, 1)[:, :self.max_pairs]
        length = torch.cat(self.lengths, 1)[:, :self.max_pairs]
        per_token = delta / length
        return {"eval_abs_logratio": delta.abs().mean().item(),
                "eval_abs_logratio_per_token": per_token.abs().mean().item(),
                "eval_chosen_logratio_per_token": per_token[0].mean().item(),
                "eval_rejected_logratio_per_token": per_token[1].mean().item()}
