"""The generation evaluation on data the project has never seen: health metrics with their reference
baselines, reward functions in TRL's GRPO contract (a module beside the sweep), win rates against the
reference's completions, the completions table, and what a reward failing mid-trial costs (that report's
reward, nothing else)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from trainables import generation
from trainables.generation import HEALTH_METRICS, REF_PREFIX, REFERENCE_BASELINES, TABLE_FILE, call_reward
from trainables.trial import run_trial

# Preference pairs phrased nothing like the bundled tasks: reverse a short word, the reversal preferred.
WORDS = ["stone", "river", "cloud", "maple", "ember", "quartz", "lantern", "meadow", "falcon", "harbor", "willow",
         "copper", "thistle", "garnet", "orchid", "summit", "glacier", "pepper", "violet", "canyon"]


def unseen_pairs(path: Path, n: int = 160) -> Path:
    rng = random.Random(7)
    with path.open("w") as f:
        for i in range(n):
            w = rng.choice(WORDS) + str(i % 10)
            f.write(json.dumps({"prompt": f"Reverse: {w}\nOut:", "chosen": f" {w[::-1]}", "rejected": f" {w}",
                                "target": w[::-1]}) + "\n")
    return path


REWARDS = """\
def exact_reverse(prompts, completions, target, **kwargs):
    return [1.0 if c.strip() == t else 0.0 for c, t in zip(completions, target)]


def length(prompts, completions, completion_ids, **kwargs):
    return [float(len(ids)) for ids in completion_ids]


CALLS = {"n": 0}


def flaky(prompts, completions, **kwargs):
    CALLS["n"] += 1
    if CALLS["n"] == 3:  # the reference's call, then the first report's; the second report's raises
        raise RuntimeError("judge timed out")
    return [0.0 for _ in completions]
"""


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    d = tmp_path / "user"
    d.mkdir()
    (d / "my_rewards_gen.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(d))  # undone after the test; the trial itself reads evaluation.import_dir
    return d


def test_repeat_ngram_rate_counts_repeats_of_earlier_ngrams():
    assert generation.repeat_ngram_rate([1, 2, 3, 4, 5], 2) == 0
    assert generation.repeat_ngram_rate([7, 7, 7, 7, 7], 2) == pytest.approx(3 / 4)
    assert generation.repeat_ngram_rate([1, 2, 1, 2, 1, 2], 2) == pytest.approx(3 / 5)
    assert generation.repeat_ngram_rate([1], 3) == 0


def test_generation_hands_the_lm_head_one_contiguous_block_and_leaves_no_hook(model_cache, monkeypatch):
    """The first forward of a generation projects a strided view of the last position; the head must get it
    contiguous (else torch's CPU matmul copies the whole head once per prompt), the completions must be what
    they were without that, and nothing may stay hooked on a model that the worker keeps between trials."""
    import contextlib

    import torch

    from trainables.config import ModelSettings
    from trainables.model import load_base_model

    model, tok = load_base_model(ModelSettings(quantization="none"), model_cache, log=None)
    texts = [f"Q: {w}\nA:" for w in WORDS[:6]]
    head = model.get_output_embeddings()
    seen = []
    # A forward hook sees the input as the head got it, after every pre-hook.
    probe = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].is_contiguous()))
    try:
        with torch.no_grad():  # the first forward of a generation, without the fix: the strided view
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            model(**enc, logits_to_keep=1)
        assert seen == [False]
        seen.clear()
        fixed = generation.generate(model, tok, texts, max_new_tokens=5, batch_size=6)
        assert seen and all(seen)  # every projection of the generation, its first included
    finally:
        probe.remove()
    assert not head._forward_pre_hooks and not head._forward_hooks
    monkeypatch.setattr(generation, "contiguous_head_input", lambda _model: contextlib.nullcontext())
    plain = generation.generate(model, tok, texts, max_new_tokens=5, batch_size=6)
    assert fixed.ids == plain.ids


def test_reward_results_are_checked():
    ok = generation.Reward("r", "m:r", lambda p, c, ids, cols: [1, None, 0.5])
    assert call_reward(ok, ["a"] * 3, ["b"] * 3, [[1]] * 3, {}) == [1.0, None, 0.5]
    short = generation.Reward("r", "m:r", lambda p, c, ids, cols: [1.0])
    with pytest.raises(ValueError, match="returned 1 values for 3 completions"):
        call_reward(short, ["a"] * 3, ["b"] * 3, [[1]] * 3, {})
    text = generation.Reward("r", "m:r", lambda p, c, ids, cols: ["good"] * 3)
    with pytest.raises(ValueError, match="return floats"):
        call_reward(text, ["a"] * 3, ["b"] * 3, [[1]] * 3, {})


def test_a_trial_on_unseen_data_reports_health_rewards_win_rates_and_a_completions_table(
        make_spec, tmp_path, reward_module):
    data = unseen_pairs(tmp_path / "reverse.jsonl")
    spec = make_spec("unseen", data={"source": str(data), "eval_fraction": 0.2},
                     dpo={"learning_rate": 3e-3, "reports_per_epoch": 2},
                     reward_hacking={"enabled": False},
                     evaluation={"num_prompts": 12, "reward_funcs": ["my_rewards_gen:exact_reverse",
                                                                     "my_rewards_gen:length", "my_rewards_gen:flaky"],
                                 "import_dir": str(reward_module)})
    reports, lines = [], []
    run_trial(spec, lambda m, c: reports.append((m, c)), log=lines.append)
    assert len(reports) == 2
    for m, ckpt in reports:
        for name in HEALTH_METRICS:
            assert name in m, name
        for name in REFERENCE_BASELINES:
            assert REF_PREFIX + name in m
        assert 0 <= m["gen_truncation_rate"] <= 1 and 0 <= m["gen_repeat_ngram_rate"] <= 1
        assert m["gen_length_ratio"] == pytest.approx(m["gen_length_tokens"] / m["ref_gen_length_tokens"])
        assert 0 <= m["eval_win_rate_exact_reverse"] <= 1
        table = json.loads(Path(ckpt, TABLE_FILE).read_text())
        assert len(table) == 12 and {r["step"] for r in table} == {m["step"]}
        # The win rate is the share of prompts whose policy completion outscores the reference's, ties half.
        wins = [1.0 if r["reward_length"] > r["reference_reward_length"] else
                0.5 if r["reward_length"] == r["reference_reward_length"] else 0.0 for r in table]
        assert m["eval_win_rate_length"] == pytest.approx(sum(wins) / len(wins))
        assert m["eval_reward_exact_reverse"] == pytest.approx(
            sum(r["reward_exact_reverse"] for r in table) / len(table))
        # Greedy completions through the tokenizer: the reference's are the same text at every report.
        assert [r["reference"] for r in table] == [r["reference"] for r in json.loads(
            Path(reports[0][1], TABLE_FILE).read_text())]
    # The flaky reward raised at the second report: that report lacks it, says why, and the trial went on.
    assert "eval_reward_flaky" in reports[0][0] and "eval_reward_flaky" not in reports[1][0]
    assert any("reward 'my_rewards_gen:flaky' failed" in line and "judge timed out" in line for line in lines)
    assert reports[1][0]["eval_reward_exact_reverse"] is not None


def test_the_reference_completions_survive_a_resume(make_spec, tmp_path):
    spec = make_spec("resume-gen", dpo={"reports_per_epoch": 2}, evaluation={"num_prompts": 8})
    first = []
    run_trial(spec, lambda m, c: first.append((m, c)), log=lambda *a: None)
    resumed = []
    run_trial(spec.model_copy(update={"output_dir": str(tmp_path / "resumed")}),
              lambda m, c: resumed.append((m, c)), resume_from=first[0][1], log=lambda *a: None)
    ref = [r["reference"] for r in json.loads(Path(first[-1][1], TABLE_FILE).read_text())]
    assert [r["reference"] for r in json.loads(Path(resumed[-1][1], TABLE_FILE).read_text())] == ref
    assert resumed[-1][0]["ref_gen_length_tokens"] == first[-1][0]["ref_gen_length_tokens"]


def test_a_sequence_classification_reward_model_scores_the_completions(make_spec, tmp_path, model_cache):
    # A reward model directory, as a user would point at one: a tiny Llama-shaped sequence classifier.
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    from trainables.tiny_model import ensure_tiny_llama

    base = ensure_tiny_llama(model_cache, log=None)
    config = AutoConfig.from_pretrained(base)
    config.num_labels = 1
    torch.manual_seed(0)
    rm = tmp_path / "tiny-rm"
    LlamaForSequenceClassification(config).save_pretrained(rm)
    AutoTokenizer.from_pretrained(base).save_pretrained(rm)
    spec = make_spec("rm", dpo={"reports_per_epoch": 1}, evaluation={"num_prompts": 6, "reward_funcs": [str(rm)]})
    reports = []
    run_trial(spec, lambda m, c: reports.append((m, c)), log=lambda *a: None)
    m, ckpt = reports[-1]
    table = json.loads(Path(ckpt, TABLE_FILE).read_text())
    scores = [r["reward_tiny_rm"] for r in table]
    assert all(isinstance(s, float) for s in scores) and len(set(scores)) > 1  # a real score per completion
    assert m["eval_reward_tiny_rm"] == pytest.approx(sum(scores) / len(scores))
    assert 0 <= m["eval_win_rate_tiny_rm"] <= 1
