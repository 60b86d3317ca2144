"""The bundled synthetic preference task: a rule a tiny model learns within one epoch.

Prompt `Q: <word>\\nA:`; the answer is the word in UPPER or lower case. UPPER is
the preferred answer exactly when the word's first letter is in a-m, so every
pair is the same word in both cases and the right answer of every clean prompt
is known. That gives two ground truths a trial can be scored on:

- preference accuracy on the clean held-out pairs (TRL's eval reward accuracy);
- answer quality: the greedy exact-answer rate on clean probe prompts (the
  answer must be the word, in the preferred case, and nothing else).

Label noise swaps chosen and rejected in a seeded fraction of training pairs;
the held-out pairs and probes are always clean.

    python -c "from trainables.synthetic import make_task, SyntheticSettings; \\
print(make_task(SyntheticSettings(num_train=4)).train[:2])"
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from trainables.config import SyntheticSettings

UPPER_FIRST_LETTERS = frozenset("abcdefghijklm")
WORD_LENGTHS = (3, 4, 5, 6)
# Streams of the word generator, so train / eval / probe / warm-start words never collide by accident.
_STREAM_TRAIN, _STREAM_HELDOUT, _STREAM_WARM = 0, 1, 2


def prompt_for(word: str) -> str:
    return f"Q: {word}\nA:"


def preferred_answer(word: str) -> str:
    """The right answer; completions start with a space so no token spans the prompt/answer boundary."""
    return " " + (word.upper() if word[0] in UPPER_FIRST_LETTERS else word.lower())


def dispreferred_answer(word: str) -> str:
    return " " + (word.lower() if word[0] in UPPER_FIRST_LETTERS else word.upper())


def make_words(n: int, seed: int, stream: int, exclude: set[str] = frozenset()) -> list[str]:
    rng = random.Random(f"dpo-sweep-words-{seed}-{stream}")
    words: list[str] = []
    seen = set(exclude)
    while len(words) < n:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.choice(WORD_LENGTHS)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


@dataclass(frozen=True)
class SyntheticTask:
    train: list[dict[str, str]]
    eval: list[dict[str, str]]
    probes: list[tuple[str, str]]  # (prompt, right answer without the leading space)
    flipped: int  # training pairs whose labels were swapped


def make_task(settings: SyntheticSettings) -> SyntheticTask:
    train_words = make_words(settings.num_train, settings.seed, _STREAM_TRAIN)
    heldout = make_words(settings.num_eval + settings.num_probe, settings.seed, _STREAM_HELDOUT, set(train_words))
    eval_words, probe_words = heldout[: settings.num_eval], heldout[settings.num_eval :]

    noise_rng = random.Random(f"dpo-sweep-noise-{settings.seed}")
    # Exactly round(rate * n) flipped pairs, chosen at random: the realised noise equals the requested one.
    n_flip = round(settings.label_noise * settings.num_train)
    flip = set(noise_rng.sample(range(settings.num_train), n_flip))
    train = []
    for i, w in enumerate(train_words):
        good, bad = preferred_answer(w), dispreferred_answer(w)
        if i in flip:
            good, bad = bad, good
        train.append({"prompt": prompt_for(w), "chosen": good, "rejected": bad})
    eval_rows = [
        {"prompt": prompt_for(w), "chosen": preferred_answer(w), "rejected": dispreferred_answer(w)} for w in eval_words
    ]
    probes = [(prompt_for(w), preferred_answer(w).strip()) for w in probe_words]
    return SyntheticTask(train=train, eval=eval_rows, probes=probes, flipped=n_flip)


def warm_start_examples(n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, answer) pairs for the supervised warm start: the format, with the case a fair coin.

    The base model learns to answer with the word, but nothing ties the case to the
    first letter, so it starts indifferent to the preference DPO will teach.
    """
    rng = random.Random(f"dpo-sweep-warm-{seed}")
    words = make_words(n, seed, _STREAM_WARM)
    return [(prompt_for(w), " " + (w.upper() if rng.random() < 0.5 else w)) for w in words]


def score_answer(generated: str, right: str) -> tuple[bool, bool]:
    """(exact, valid) of a generation's first line (an answer is one line; what follows is not read):
    exact = the right answer and nothing else; valid = the word in either case."""
    text = generated.split("\n")[0].strip()
    return text == right, text.lower() == right.lower() and text in (right.lower(), right.upper())
