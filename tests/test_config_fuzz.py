"""The config loaders never fail with anything but a ConfigError, whatever YAML or --set they get."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config import load_sweep_config
from trainables.config import ConfigError
from trainables.config_io import load_trial_spec

KEYS = ["trial", "dpo", "beta", "learning_rate", "model", "data", "lora", "r", "search", "space", "grid",
        "resources", "gpu_per_trial", "label_smoothing", "loss_type", "synthetic", "name", "storage", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["auto", "nf4", "sigmoid", "hinge", "1e-5", "-1"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=12)
documents = st.one_of(values, st.dictionaries(st.sampled_from(KEYS), values, max_size=5))
override_keys = st.lists(st.sampled_from(KEYS + ["", " "]), min_size=0, max_size=4).map(".".join)
overrides = st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", override_keys, st.text(max_size=15)),
    st.text(max_size=20)), max_size=4)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def loads_or_refuses(load, path, sets):
    try:
        load(path, sets)
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)


@pytest.mark.parametrize("load", [load_trial_spec, load_sweep_config], ids=["trial", "sweep"])
@FUZZ
@given(doc=documents, sets=overrides)
def test_config_loaders(tmp_path, load, doc, sets):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    loads_or_refuses(load, path, sets)


@FUZZ
@given(text=st.text(max_size=200))
def test_raw_yaml_text(tmp_path, text):
    path = tmp_path / "raw.yaml"
    path.write_text(text)
    loads_or_refuses(load_sweep_config, path, [])
