"""Sweep configs and preflight: named spaces, inline spaces, every refusal, shipped YAMLs."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from procs import free_port

from orchestrator.cluster import ClusterView
from orchestrator.config import load_sweep_config, validate_sweep_config
from orchestrator.preflight import PreflightError, check_resources, run_preflight
from search_spaces import SPACES
from trainables.config import ConfigError


@pytest.fixture
def sweep(make_sweep):
    return make_sweep


@pytest.mark.parametrize("name", list(SPACES))
def test_every_named_space_validates(sweep, name):
    algorithm = "random" if name == "full" else "grid"
    pre = run_preflight(sweep(search={"space": name, "algorithm": algorithm, "num_samples": 2}), log=None)
    # A repeated grid also varies the seed (see the test on grid repeats below); sampled search does not.
    extra = {"seed"} if algorithm == "grid" else set()
    assert set(pre.param_space) == set(SPACES[name]()) | extra


def shipped_configs():
    return sorted(Path(str(resources.files("orchestrator") / "configs")).glob("*.yaml"))


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.name)
def test_every_shipped_yaml_validates(path, model_cache, tmp_path, request):
    if path.name == "smollm2.yaml":  # the real model: the session's one conversion of it
        model_cache = request.getfixturevalue("smollm2_cache")
    if path.name == "demo-trial.yaml":  # the one trial config; the rest are sweeps
        from trainables.config_io import load_trial_spec

        load_trial_spec(path, [f"cache_dir={model_cache}"])
    else:
        run_preflight(load_sweep_config(path, [f"trial.cache_dir={model_cache}", f"storage.path={tmp_path}"]),
                      log=None)


def test_inline_space_kinds(sweep):
    space = {"beta": {"grid": [0.05, 0.1]}, "learning_rate": {"loguniform": [1e-5, 1e-3]},
             "num_train_epochs": {"choice": [1, 2]}, "label_smoothing": {"uniform": [0.0, 0.2]}, "dpo.seed": 3}
    pre = run_preflight(sweep(search={"space": space, "algorithm": "random", "num_samples": 3}), log=None)
    # Keys leave preflight canonical: a DPO knob by its short name, whichever way the YAML spelled it.
    assert pre.param_space["beta"] == {"grid_search": [0.05, 0.1]} and pre.param_space["seed"] == 3
    assert "dpo.seed" not in pre.param_space
    assert pre.max_reports == 4 * 2


def test_two_keys_for_one_field_are_refused(sweep):
    text = refusals(sweep(search={"space": {"beta": {"grid": [0.1]}, "dpo.beta": {"grid": [0.2]}}}))
    assert "search.space: 'beta' and 'dpo.beta' both set dpo.beta; keep one of them" in text


def refusals(cfg, cluster=None):
    with pytest.raises(PreflightError) as err:
        run_preflight(cfg, cluster, log=None)
    return "\n".join(err.value.problems)


def test_unknown_space_keys_name_the_closest_valid_one(sweep):
    text = refusals(sweep(search={"space": {"betta": {"grid": [0.1]}, "lr": {"grid": [1e-4]},
                                            "lora.rank": {"grid": [4]}}}))
    assert "search.space.betta: unknown key; did you mean 'beta'?" in text
    assert "search.space.lr: unknown key; did you mean 'learning_rate'?" in text
    assert "search.space.lora.rank: unknown key; did you mean 'lora.r'?" in text


def test_unknown_named_space(sweep):
    assert "unknown named space 'seed-exercize'; did you mean 'seed-exercise'?" in refusals(
        sweep(search={"space": "seed-exercize"}))


@pytest.mark.parametrize(
    ("space", "needle"),
    [
        ({"beta": {"grid": [0.1, -0.2]}}, "search.space.beta: value -0.2 is invalid: Input should be greater than 0"),
        ({"learning_rate": {"grid": [0, 1e-4]}}, "search.space.learning_rate: value 0 is invalid"),
        ({"label_smoothing": {"uniform": [0.0, 0.6]}}, "search.space.label_smoothing: value 0.6 is invalid"),
        ({"num_train_epochs": {"choice": [0, 1]}}, "search.space.num_train_epochs: value 0 is invalid"),
        ({"gradient_accumulation_steps": {"grid": [0]}}, "search.space.gradient_accumulation_steps: value 0"),
        ({"learning_rate": {"loguniform": [0, 1e-3]}}, "loguniform: bounds must be > 0"),
        ({"beta": {"uniform": [0.5, 0.1]}}, "lower must be < upper"),
        ({"beta": {"grd": [0.1]}}, "search.space.beta: expected one of {grid: ..."),
        ({"label_smoothing": {"grid": [0.1]}, "loss_type": {"grid": ["hinge"]}},
         "label_smoothing=0.1 has no effect with loss_type='hinge'"),
    ],
)
def test_out_of_range_space_values_are_refused(sweep, space, needle):
    try:  # a malformed domain is refused by the config's validation, a bad value by preflight
        cfg = sweep(search={"space": space})
    except ConfigError as e:
        assert needle in "\n".join(e.problems)
        return
    assert needle in refusals(cfg)


def test_all_problems_at_once(sweep, tmp_path, cluster_view):
    cluster_view(8)  # no GPU
    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_text('{"prompt": "Q: a\\nA:", "chosen": " A", "rejected": " A"}\n' * 3)
    text = refusals(sweep(search={"space": {"betta": {"grid": [1]}}}, resources={"gpu_per_trial": 1},
                          trial={"data": {"source": str(bad_rows)}}))
    assert "betta" in text and "no GPU" in text and f"{bad_rows}: row 1, column 'rejected'" in text


def test_missing_model_path_is_refused(sweep):
    assert "trial.model.name_or_path: directory './no/such/model' does not exist" in refusals(
        sweep(trial={"model": {"name_or_path": "./no/such/model"}}))


def test_a_gpu_request_without_gpus_is_refused_not_left_pending(sweep, cluster_view):
    cluster_view(8)
    text = refusals(sweep(resources={"gpu_per_trial": 0.5}))
    assert "this machine has no GPU; Tune would leave every trial PENDING forever" in text
    # The same rule against a cluster's resources, as `--address` preflight sees them.
    joined = {"joined": True, "cpus": 8}
    assert check_resources(sweep(resources={"gpu_per_trial": 1}), ClusterView(gpus=0, **joined))
    assert not check_resources(sweep(resources={"gpu_per_trial": 0.25}), ClusterView(gpus=2, **joined))
    assert "the Ray cluster has 2" in check_resources(sweep(resources={"gpu_per_trial": 4}),
                                                      ClusterView(gpus=2, **joined))[0]
    assert "cpu_per_trial: 64 CPUs per trial" in check_resources(sweep(resources={"cpu_per_trial": 64}),
                                                                 ClusterView(gpus=0, **joined))[0]


def test_a_gpu_request_on_a_gpu_machine_is_packed_by_its_memory(sweep, cluster_view):
    cluster_view(16, 1, 80)  # a 16-core machine with one 80 GB GPU, whatever this one has
    pre = run_preflight(sweep(resources={"gpu_per_trial": "auto", "cpu_per_trial": 2}), log=None)
    assert 0 < pre.gpu_per_trial < 1 and any("trial(s) per GPU" in n for n in pre.notes)
    assert "has 1" in refusals(sweep(resources={"gpu_per_trial": 2}))


def test_a_hub_model_that_cannot_load_is_refused_by_preflight(sweep, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    text = refusals(sweep(trial={"model": {"name_or_path": "acme/no-such-model"}}))
    assert "trial.model.name_or_path: 'acme/no-such-model' is not in the Hugging Face cache" in text


def test_unreachable_tracking_server_is_refused(sweep):
    port = free_port()  # bound and closed again: nothing listens there
    text = refusals(sweep(tracking={"uri": f"http://127.0.0.1:{port}"}))
    assert f"cannot reach the MLflow server at http://127.0.0.1:{port}" in text
    assert "is a local path" in refusals(sweep(tracking={"uri": "./mlruns"}))


def test_unknown_metrics_are_refused(sweep):
    text = refusals(sweep(search={"metric": "eval_acc"}, trial={"reward_hacking": {"metric": "reward"}}))
    assert "search.metric: 'eval_acc' is not a reported metric" in text
    assert "trial.reward_hacking.metric: 'reward' is not a reported metric" in text


def test_report_schedule_must_fit_the_data(sweep):
    assert "an epoch has 4 optimizer steps" in refusals(
        sweep(search={"space": {"gradient_accumulation_steps": {"grid": [1, 4]}}},
              trial={"dpo": {"reports_per_epoch": 6}}))


def test_sweep_config_errors_name_fields():
    with pytest.raises(ConfigError) as err:
        validate_sweep_config({"scheduler": {"grace": 1, "reduction_factor": 1}, "trial": {"dpo": {"beta": 0}},
                               "name": "a b"})
    text = "\n".join(err.value.problems)
    assert "scheduler.grace: unknown key; did you mean 'grace_period'?" in text
    assert "scheduler.reduction_factor: Input should be greater than 1, got 1" in text
    assert "trial.dpo.beta: Input should be greater than 0, got 0" in text
    assert "name: String should match pattern" in text


def test_grid_repeats_become_seeds_so_they_are_real_replicates(sweep):
    space = {"beta": {"grid": [0.1, 0.5]}}
    pre = run_preflight(sweep(search={"space": space, "num_samples": 3}), log=None)
    assert pre.param_space["seed"] == {"grid_search": [0, 1, 2]} and pre.num_samples == 1
    assert pre.num_trials == 6 and any("repeats run with seed 0, 1, 2" in n for n in pre.notes)
    # A space that varies the seed itself, or sampled search, is left alone.
    pre = run_preflight(sweep(search={"space": {**space, "dpo.seed": {"grid": [7, 8]}}, "num_samples": 2}), log=None)
    assert pre.param_space["seed"] == {"grid_search": [7, 8]} and pre.num_samples == 2  # the user's own axis


def test_a_sweep_says_and_records_how_many_rows_drop_invalid_dropped(sweep, tmp_path):
    """Preflight, the shared reference and every trial drop the same rows: the sweep prints it once and records
    it on its MLflow run."""
    import json

    from orchestrator.sweep import _start_sweep
    from trainables.tracking import make_client

    good = [{"prompt": f"Q{i}:", "chosen": f" a{i}", "rejected": f" b{i}"} for i in range(40)]
    bad = [{"prompt": "Q:", "chosen": " same", "rejected": " same"}, {"prompt": "Q:", "chosen": None, "rejected": None}]
    data = tmp_path / "prefs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in good + bad) + "\n")
    cfg = sweep(trial={"data": {"source": str(data), "drop_invalid": True}, "dpo": {"reports_per_epoch": 1}},
                search={"space": {"beta": {"grid": [0.1]}}})
    pre = run_preflight(cfg, log=None)
    assert pre.dropped_rows == {"chosen == rejected": 1, "None": 1} and pre.train_rows == 36
    assert "drop_invalid dropped 2 row(s): chosen == rejected 1, None 1; every trial trains on the 36 rows left" \
        in pre.notes
    state = _start_sweep(cfg, pre, make_client(pre.tracking_uri))
    run = make_client(pre.tracking_uri).get_run(state.parent_run_id)
    assert run.data.params["data.dropped_rows"] == "2"
    assert run.data.tags["dpo_sweep.dropped_rows"] == "chosen == rejected 1, None 1"
