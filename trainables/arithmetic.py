"""The bundled real-model task: two-number addition as chat, with answers that can be checked.

For instruct models with a chat template (`smollm2-135m`, or any model a sweep names). Every row
is conversational, so the model's own chat template renders it:

    prompt   [{"role": "user", "content": "What is 26 + 28? Reply with just the number."}]
    chosen   [{"role": "assistant", "content": "26 + 28 = 54"}]
    rejected [{"role": "assistant", "content": "26 + 28 = 44"}]

The rejected answer is a mistake people and small models make: a carry dropped or added (+-10),
or an off-by-one. Two completion forms:

- `short`: `a + b = c`, the form SmolLM2-135M-Instruct answers the short question in by itself
  (about 8 tokens);
- `long`: a worked answer of 40-50 tokens - tens, ones, then the sum - in which chosen and
  rejected share every token but the answer's, as real preference pairs often differ in a
  small part of a long reply. The worked steps are right in both; only the stated sum differs. The
  question asks to work it out step by step.

Ground truth for "did the policy degrade": greedy answers to clean probe questions, scored by the
last number in the reply (exact) and whether the reply states a number at all (valid), plus the
reply's length in tokens. SmolLM2-135M-Instruct, untuned, answers about a quarter of the short
questions right in fp32 (15/64 at `a, b` in 2..49, 16 new tokens) but only 4/64 once bitsandbytes
stores it in NF4: a 135 M model loses much of its arithmetic to 4-bit weights. DPO has something
to teach and something to break.

Label noise swaps chosen and rejected in a seeded fraction of training pairs; held-out pairs and
probes are always clean.

    python -c "from trainables.arithmetic import make_task; from trainables.config import ArithmeticSettings; \\
print(make_task(ArithmeticSettings(num_train=8)).train[0])"
"""

from __future__ import annotations

import random
import re

from trainables.config import ArithmeticSettings
from trainables.synthetic import SyntheticTask

_STREAM_TRAIN, _STREAM_HELDOUT = 0, 1
_NUMBER = re.compile(r"-?\d+")


def question(a: int, b: int, form: str = "short") -> list[dict[str, str]]:
    ask = "Work it out step by step." if form == "long" else "Reply with just the number."
    return [{"role": "user", "content": f"What is {a} + {b}? {ask}"}]


def short_answer(a: int, b: int, total: int) -> str:
    return f"{a} + {b} = {total}"


def long_answer(a: int, b: int, total: int) -> str:
    """A worked answer; the steps depend only on a and b, so a wrong `total` changes the last sentence only."""
    return (f"Let's add {a} and {b} step by step. First the tens: {a // 10 * 10} + {b // 10 * 10} = "
            f"{a // 10 * 10 + b // 10 * 10}. Then the ones: {a % 10} + {b % 10} = {a % 10 + b % 10}. "
            f"Putting them together, the answer is {total}.")


def wrong_total(a: int, b: int, rng: random.Random) -> int:
    """A plausible mistake: a carry dropped or added (+-10) or an off-by-one; never the right sum or negative."""
    right = a + b
    options = [right + d for d in (-10, 10, -1, 1) if right + d >= 0]
    return rng.choice(options)


def answer(form: str, a: int, b: int, total: int) -> str:
    return long_answer(a, b, total) if form == "long" else short_answer(a, b, total)


def make_pairs(n: int, settings: ArithmeticSettings, stream: int, exclude: set[tuple[int, int]] = frozenset(),
               ) -> list[tuple[int, int]]:
    """n distinct (a, b) operand pairs, none in `exclude` (so held-out questions are never trained on)."""
    rng = random.Random(f"dpo-sweep-arith-{settings.seed}-{stream}")
    lo, hi = settings.min_operand, settings.max_operand
    # ArithmeticSettings refuses more questions than the operands give; this loop would never end otherwise.
    assert n <= (hi - lo + 1) ** 2 - len(exclude), "ArithmeticSettings._enough_questions let too many through"
    out: list[tuple[int, int]] = []
    seen = set(exclude)
    while len(out) < n:
        pair = (rng.randint(lo, hi), rng.randint(lo, hi))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


def _row(form: str, a: int, b: int, rng: random.Random) -> dict:
    return {"prompt": question(a, b, form),
            "chosen": [{"role": "assistant", "content": answer(form, a, b, a + b)}],
            "rejected": [{"role": "assistant", "content": answer(form, a, b, wrong_total(a, b, rng))}]}


def make_task(settings: ArithmeticSettings) -> SyntheticTask:
    train_q = make_pairs(settings.num_train, settings, _STREAM_TRAIN)
    heldout = make_pairs(settings.num_eval + settings.num_probe, settings, _STREAM_HELDOUT, set(train_q))
    eval_q, probe_q = heldout[: settings.num_eval], heldout[settings.num_eval :]
    rng = random.Random(f"dpo-sweep-arith-wrong-{settings.seed}")
    noise_rng = random.Random(f"dpo-sweep-arith-noise-{settings.seed}")
    # Exactly round(rate * n) flipped pairs: the realised noise equals the requested one.
    n_flip = round(settings.label_noise * settings.num_train)
    flip = set(noise_rng.sample(range(settings.num_train), n_flip))
    train = []
    for i, (a, b) in enumerate(train_q):
        row = _row(settings.form, a, b, rng)
        if i in flip:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
        train.append(row)
    eval_rows = [_row(settings.form, a, b, rng) for a, b in eval_q]
    probes = [(question(a, b, settings.form), str(a + b)) for a, b in probe_q]
    return SyntheticTask(train=train, eval=eval_rows, probes=probes, flipped=n_flip)


def score_answer(generated: str, right: str) -> tuple[bool, bool]:
    """(exact, valid): exact = the reply's last number is the right sum; valid = the reply states a number."""
    numbers = _NUMBER.findall(generated)
    return bool(numbers) and numbers[-1] == right, bool(numbers)


_QUESTION = re.compile(r"What is (-?\d+) \+ (-?\d+)\?")


def exact_answer(prompts, completions, **kwargs) -> list[float | None]:
    """The task's answer checker as a reward function in TRL's GRPO contract (`evaluation.reward_funcs:
    [trainables.arithmetic:exact_answer]`): 1.0 where the reply's last number is the sum the prompt asks for,
    else 0.0; None for a prompt that is not one of this task's questions. The same check as the probes'
    `answer_exact_rate` (`score_answer`), on the held-out pairs' prompts."""
    scores: list[float | None] = []
    for prompt, completion in zip(prompts, completions, strict=True):
        text = prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt)
        reply = completion if isinstance(completion, str) else " ".join(m["content"] for m in completion)
        asked = _QUESTION.search(text)
        scores.append(None if asked is None else
                      float(score_answer(reply, str(int(asked[1]) + int(asked[2])))[0]))
    return scores
