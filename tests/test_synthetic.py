"""The bundled synthetic task and the warm-started base model it is paired with."""

from __future__ import annotations

import pytest
import torch

from trainables.config import ModelSettings, SyntheticSettings
from trainables.model import load_base_model
from trainables.probes import answer_quality
from trainables.synthetic import make_task, preferred_answer, score_answer


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.4, 0.5])
def test_label_noise_flips_exactly_that_fraction_and_eval_stays_clean(noise):
    task = make_task(SyntheticSettings(num_train=400, num_eval=100, num_probe=20, label_noise=noise, seed=1))
    flipped = sum(r["chosen"] != preferred_answer(r["prompt"][3:-3]) for r in task.train)
    assert flipped == task.flipped == round(noise * 400)
    assert all(r["chosen"] == preferred_answer(r["prompt"][3:-3]) for r in task.eval)
    assert all(right == preferred_answer(p[3:-3]).strip() for p, right in task.probes)


def test_train_eval_and_probe_words_are_disjoint_and_seeded():
    s = SyntheticSettings(num_train=300, num_eval=80, num_probe=40, seed=7)
    a, b = make_task(s), make_task(s)
    assert a == b
    train, evals, probes = ({r["prompt"] for r in a.train}, {r["prompt"] for r in a.eval}, {p for p, _ in a.probes})
    assert len(train) == 300 and not train & evals and not train & probes and not evals & probes
    assert make_task(SyntheticSettings(num_train=300, seed=8)).train != a.train


def test_answer_scoring():
    assert score_answer(" CAT", "CAT") == (True, True)
    assert score_answer("cat", "CAT") == (False, True)
    assert score_answer("CATS", "CAT") == (False, False)
    assert score_answer("Cat", "CAT") == (False, False)


def test_warm_started_base_answers_in_format_but_is_indifferent(model_cache):
    model, tok = load_base_model(ModelSettings(quantization="none", compute_dtype="float32"), model_cache, log=None)
    task = make_task(SyntheticSettings(num_train=8, num_eval=200, num_probe=100))
    quality = answer_quality(model, tok, task.probes)
    assert quality["answer_valid_rate"] >= 0.9  # it answers with the word...
    assert 0.3 <= quality["answer_exact_rate"] <= 0.8  # ...in a case unrelated to the rule

    correct = 0
    with torch.no_grad():
        for row in task.eval:
            n = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
            scores = []
            for answer in (row["chosen"], row["rejected"]):
                ids = tok(row["prompt"] + answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
                logp = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])
                scores.append(logp[n - 1 :].sum().item())
            correct += scores[0] > scores[1]
    assert 0.35 <= correct / len(task.eval) <= 0.75  # indifferent: DPO has something to learn


def test_only_the_first_line_of_a_generation_is_the_answer():
    assert score_answer(" CAT\nQ: dog", "CAT") == (True, True)
