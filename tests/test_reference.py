"""Reference log-probs and token ids computed once per sweep: the key, equivalence, reuse."""

from __future__ import annotations

import json
import shutil

import pytest

from orchestrator.prepare import build_shared_reference
from trainables.data import load_preference_data
from trainables.model import load_tokenizer, resolve_compute_dtype, resolve_model_path
from trainables.reference import reference_key, reference_key_parts
from trainables.trial import run_trial


def quiet(*_):
    pass


def key_of(spec, tokenizer_edit=None):
    path = resolve_model_path(spec.model, spec.cache_dir, log=None)
    tok = load_tokenizer(path, spec.model)
    if tokenizer_edit:
        tokenizer_edit(tok)
    data = load_preference_data(spec.data, tok, spec.dpo.max_length, spec.dpo.truncation_mode)
    return reference_key(reference_key_parts(spec, path, tok, data.train, data.eval, data.probes))


@pytest.mark.parametrize("section", [
    {"dpo": {"beta": 0.5}}, {"dpo": {"learning_rate": 1e-3}}, {"dpo": {"num_train_epochs": 3}},
    {"dpo": {"gradient_accumulation_steps": 4}}, {"dpo": {"label_smoothing": 0.2}},
    {"dpo": {"loss_type": "robust", "label_smoothing": 0.1}}, {"lora": {"r": 32}}, {"dpo": {"seed": 7}},
], ids=lambda s: next(iter(next(iter(s.values())))))
def test_key_ignores_the_swept_knobs(make_spec, section):
    assert key_of(make_spec()) == key_of(make_spec(**section))


def test_key_changes_with_model_quantization_tokenizer_data_and_length(make_spec, tmp_path, model_cache):
    base = key_of(make_spec())
    local = resolve_model_path(make_spec().model, model_cache, log=None)
    # The same weights under another name or path share the key (copytree keeps sizes and mtimes)...
    shutil.copytree(local, tmp_path / "same")
    assert key_of(make_spec(model={"name_or_path": local})) == base
    assert key_of(make_spec(model={"name_or_path": str(tmp_path / "same")})) == base
    # ...another model does not.
    shutil.copytree(local, tmp_path / "other")
    config = json.loads((tmp_path / "other" / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (tmp_path / "other" / "config.json").write_text(json.dumps(config))
    changed = {
        "model": key_of(make_spec(model={"name_or_path": str(tmp_path / "other")})),
        "quantization": key_of(make_spec(model={"quantization": "fp4"})),
        # Whatever 'auto' (the default) resolves to on this machine, another dtype.
        "compute dtype": key_of(make_spec(model={"compute_dtype": (
            "float32" if resolve_compute_dtype("auto") != "float32" else "bfloat16")})),
        "tokenizer": key_of(make_spec(), tokenizer_edit=lambda t: setattr(t, "chat_template", "{{ x }}")),
        "data": key_of(make_spec(data={"synthetic": {"num_train": 512, "num_eval": 128, "label_noise": 0.1}})),
        # The probes the reference's answers were measured on (the store holds those answers).
        "probes": key_of(make_spec(data={"synthetic": {"num_train": 512, "num_eval": 128, "num_probe": 16}})),
        "max length": key_of(make_spec(dpo={"max_length": 48})),
        "truncation": key_of(make_spec(dpo={"truncation_mode": "keep_end"})),
    }
    assert all(k != base for k in changed.values()), changed
    assert len(set(changed.values())) == len(changed)


def test_a_trial_on_the_shared_reference_matches_one_that_computes_its_own(make_spec, tmp_path, monkeypatch):
    own = []
    run_trial(make_spec("own"), lambda m, c: own.append(m), log=quiet)
    ref = build_shared_reference(make_spec("ref"), tmp_path / "cache", log=quiet)
    assert ref.computed and ref.train_rows == 512 and ref.eval_rows == 128

    # No reference forward pass may run in a trial on shared data: disabling the adapter is how the
    # PEFT path gets the reference, so make that fail.
    import peft

    def refuse(*a, **k):
        raise AssertionError("reference forward pass in a trial with a shared reference")

    monkeypatch.setattr(peft.PeftModel, "disable_adapter", refuse)
    monkeypatch.setattr("trl.trainer.dpo_trainer.use_adapter", refuse)
    # Except the generation evaluation's: the reference scores the policy's new completions (NLL, KL), which no
    # precomputation can hold. Its own tests cover it; here it is left out.
    monkeypatch.setattr("trainables.generation.GenerationEval.evaluate", lambda self, model, step: ({}, []))
    shared = []
    result = run_trial(make_spec("shared"), lambda m, c: shared.append(m), log=quiet, shared_reference=str(ref.path))
    assert "shared reference" in result.data_description
    assert [m["step"] for m in own] == [m["step"] for m in shared]
    # The reference's probe answers come from the store too: the trial spends no time on them.
    assert shared[-1]["time_reference_s"] < 0.1 * own[-1]["time_reference_s"]
    for a, b in zip(own, shared, strict=True):
        for key in ("eval_loss", "eval_rewards_accuracies", "eval_rewards_margins", "eval_logps_chosen",
                    "train_loss", "eval_abs_logratio", "answer_exact_rate", "ref_answer_exact_rate",
                    "ref_answer_length_tokens"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), key


def test_the_same_key_is_reused_not_recomputed(make_spec, tmp_path):
    first = build_shared_reference(make_spec("a"), tmp_path, log=quiet)
    again = build_shared_reference(make_spec("b", dpo={"beta": 0.9, "learning_rate": 1e-3}), tmp_path, log=quiet)
    assert first.computed and not again.computed and again.path == first.path
    other = build_shared_reference(make_spec("c", dpo={"max_length": 48}), tmp_path, log=quiet)
    assert other.computed and other.path != first.path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.key, other.key])
