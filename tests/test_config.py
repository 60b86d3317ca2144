"""Trial config: unknown keys and out-of-range values refused with field and value; overrides; shipped YAMLs."""

from __future__ import annotations

import os

import pytest

from orchestrator.cli import shipped_config
from trainables.config import ConfigError, TrialSpec
from trainables.config_io import apply_overrides, load_trial_spec, validate_trial_spec
from trainables.trainer import loss_settings


@pytest.mark.parametrize(
    ("raw", "field", "value"),
    [
        ({"dpo": {"beta": 0}}, "dpo.beta", "0"),
        ({"dpo": {"beta": -0.1}}, "dpo.beta", "-0.1"),
        ({"dpo": {"learning_rate": -1e-6}}, "dpo.learning_rate", "-1e-06"),
        ({"dpo": {"learning_rate": 0}}, "dpo.learning_rate", "0"),
        ({"dpo": {"label_smoothing": 0.5}}, "dpo.label_smoothing", "0.5"),
        ({"dpo": {"label_smoothing": -0.1}}, "dpo.label_smoothing", "-0.1"),
        ({"dpo": {"num_train_epochs": 0}}, "dpo.num_train_epochs", "0"),
        ({"dpo": {"gradient_accumulation_steps": 0}}, "dpo.gradient_accumulation_steps", "0"),
        ({"data": {"synthetic": {"label_noise": 0.6}}}, "data.synthetic.label_noise", "0.6"),
        ({"model": {"quantization": "nf3"}}, "model.quantization", "'nf3'"),
        ({"lora": {"r": 0}}, "lora.r", "0"),
    ],
)
def test_out_of_range_values_name_field_and_value(raw, field, value):
    with pytest.raises(ConfigError) as err:
        validate_trial_spec(raw)
    line = next(p for p in err.value.problems if p.startswith(field + ":"))
    assert f"got {value}" in line


def test_unknown_keys_are_refused_with_the_closest_valid_name():
    with pytest.raises(ConfigError) as err:
        validate_trial_spec({"dpo": {"lr": 1e-5, "betta": 0.1}, "lora": {"rank": 4}, "colour": "red"})
    problems = "\n".join(err.value.problems)
    assert "dpo.lr: unknown key; did you mean 'learning_rate'?" in problems
    assert "dpo.betta: unknown key; did you mean 'beta'?" in problems
    assert "lora.rank: unknown key; did you mean 'r'?" in problems
    assert "colour: unknown key; remove it or check its spelling" in problems
    assert len(err.value.problems) == 4


def test_every_problem_is_reported_at_once_including_the_loss_check():
    with pytest.raises(ConfigError) as err:
        validate_trial_spec({"dpo": {"beta": -1, "label_smoothing": 0.1, "loss_type": "hinge"}})
    problems = err.value.problems
    assert any(p.startswith("dpo.beta:") for p in problems)
    assert any("label_smoothing=0.1 has no effect with loss_type='hinge'" in p for p in problems)


@pytest.mark.parametrize("loss", ["hinge", "ipo", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "sigmoid_norm"])
def test_loss_types_that_ignore_label_smoothing_are_refused(loss):
    with pytest.raises(ConfigError, match=rf"label_smoothing=0.2 has no effect with loss_type='{loss}'"):
        validate_trial_spec({"dpo": {"label_smoothing": 0.2, "loss_type": loss}})
    validate_trial_spec({"dpo": {"label_smoothing": 0.0, "loss_type": loss}})  # fine without smoothing


def test_unknown_choices_list_the_valid_ones_and_the_closest():
    with pytest.raises(ConfigError, match="dpo.loss_type: Input should be 'sigmoid', 'hinge', 'ipo'"):
        validate_trial_spec({"dpo": {"loss_type": "dpo"}})
    with pytest.raises(ConfigError, match="got 'cosin'; did you mean 'cosine'"):
        validate_trial_spec({"dpo": {"lr_scheduler_type": "cosin"}})


def test_the_lr_schedulers_are_transformers_own():
    from transformers import SchedulerType

    from trainables.config import LR_SCHEDULERS

    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType}


def test_every_config_field_has_a_description():
    from pydantic import BaseModel

    from orchestrator.config import SweepConfig
    from search_spaces.inline import Choice, Grid, LogUniform, Uniform

    def missing(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, info in model.model_fields.items():
            if not info.description:
                out.append(prefix + name)
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                out += missing(info.annotation, f"{prefix}{name}.")
        return out

    assert [f for m in (SweepConfig, Grid, Choice, Uniform, LogUniform) for f in missing(m)] == []


def test_trl_and_transformers_own_refusals_come_before_any_model_loads():
    """A schedule that needs an eval strategy, or settings dpo-sweep does not pass, is refused by building the
    real DPOConfig and scheduler: a ConfigError naming it, not a traceback once the trial has started."""
    from trainables.trainer import check_trainer_config

    check_trainer_config(TrialSpec())
    for name, needle in (("reduce_lr_on_plateau", "requires an eval strategy"),
                         ("cosine_with_min_lr", "min_lr or min_lr_rate"), ("warmup_stable_decay", "num_decay_steps")):
        with pytest.raises(ConfigError, match=needle):
            check_trainer_config(validate_trial_spec({"dpo": {"lr_scheduler_type": name}}))


def test_cdpo_is_a_weighted_sum_of_trl_losses():
    assert loss_settings("sigmoid", 0.0) == {"loss_type": ["sigmoid"], "loss_weights": None, "label_smoothing": 0.0}
    s = loss_settings("sigmoid", 0.2)
    assert s["loss_type"] == ["sigmoid", "robust"] and s["loss_weights"] == pytest.approx([1.6, -0.6])
    assert loss_settings("robust", 0.2)["loss_type"] == ["robust"]


def test_overrides_are_dotted_and_typed_as_yaml(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("dpo:\n  beta: 0.1\n  seed: 3\n")
    spec = load_trial_spec(path, ["dpo.beta=0.25", "lora.target_modules=[q_proj, v_proj]", "data.drop_invalid=true"])
    assert spec.dpo.beta == 0.25 and spec.dpo.seed == 3
    assert spec.lora.target_modules == ["q_proj", "v_proj"] and spec.data.drop_invalid is True
    assert apply_overrides({"a": 1}, ["b.c=2"]) == {"a": 1, "b": {"c": 2}}
    with pytest.raises(ConfigError, match="expected key=value"):
        load_trial_spec(None, ["dpo.beta"])


def test_exponents_without_a_dot_are_numbers_in_files_and_overrides(tmp_path):
    """YAML 1.1 (PyYAML's default) reads 5e-4 as the string '5e-4': a learning-rate grid would sweep text."""
    from orchestrator.config import load_sweep_config

    path = tmp_path / "s.yaml"
    path.write_text("trial: {dpo: {learning_rate: 2e-4}}\n"
                    "search: {space: {beta: {grid: [0.1, 0.5]}, learning_rate: {grid: [5e-4, 1E-3]}}}\n")
    cfg = load_sweep_config(path, ["search.space.beta.grid=[1e-1, 5e-1]"])
    assert cfg.trial.dpo.learning_rate == 2e-4
    lrs, betas = cfg.search.space["learning_rate"].grid, cfg.search.space["beta"].grid
    assert lrs == [5e-4, 1e-3] and betas == [0.1, 0.5]
    assert all(isinstance(v, float) for v in lrs + betas)
    assert apply_overrides({}, ["a=5e-4x", "b=1_000", "c=12"]) == {"a": "5e-4x", "b": 1000, "c": 12}


def test_bad_yaml_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_trial_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dpo: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_trial_spec(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_trial_spec(bad)
    bad.write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_trial_spec(bad)
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):  # named as what it is, not "does not exist"
        load_trial_spec(fifo)


def test_output_dir_is_made_absolute():
    assert validate_trial_spec({"output_dir": "rel/dir"}).output_dir.startswith("/")


def test_shipped_trial_config_validates():
    spec = load_trial_spec(shipped_config("demo-trial.yaml"))
    assert spec.model.quantization == "nf4" and spec.data.source == "synthetic"


def test_default_paths_are_absolute_when_the_yaml_never_names_them():
    # A minimal sweep YAML (no storage section) once reached Ray with 'dpo-sweep-output', which it refuses.
    from pathlib import Path

    from orchestrator.config import validate_sweep_config
    from trainables.config import TrialSpec

    cfg = validate_sweep_config({"name": "minimal", "trial": {"data": {"source": "prefs.jsonl"}}})
    assert Path(cfg.storage.path).is_absolute() and Path(TrialSpec().output_dir).is_absolute()


def test_a_reward_function_makes_its_win_rate_the_default_metric_unless_the_yaml_names_one():
    from orchestrator.config import validate_sweep_config

    reward = {"trial": {"evaluation": {"reward_funcs": ["trainables.arithmetic:exact_answer"]}}}
    assert validate_sweep_config({}).search.metric == "eval_rewards_accuracies"
    assert validate_sweep_config(reward).search.metric == "eval_win_rate_exact_answer"
    named = {**reward, "search": {"metric": "eval_rewards_accuracies"}}
    assert validate_sweep_config(named).search.metric == "eval_rewards_accuracies"


def test_the_config_reference_page_is_current():
    # docs/config.md is written from the pydantic fields; regenerate it when a field or default changes.
    from pathlib import Path

    from orchestrator.config_reference import render

    page = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert page.read_text() == render(), "docs/config.md is out of date: run " \
        "`.venv/bin/python -m orchestrator.config_reference > docs/config.md`"


def test_the_readme_is_a_front_door_and_its_links_resolve():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links and all((root / link).exists() for link in links), [x for x in links if not (root / x).exists()]
    for doc in (root / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([^)#:]+)\)", doc.read_text()):
            assert (doc.parent / link).exists(), (doc.name, link)
