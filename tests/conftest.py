"""Shared fixtures: one tiny-llama per test session, built in a temporary cache (no network)."""

from __future__ import annotations

import warnings

import pytest

from trainables.config import TrialSpec
from trainables.tiny_model import ensure_tiny_llama

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> str:
    cache = tmp_path_factory.mktemp("model-cache")
    ensure_tiny_llama(cache, log=None)
    return str(cache)


@pytest.fixture
def make_spec(model_cache, tmp_path):
    """A small, fast trial spec on tiny-llama + synthetic data; keyword dicts override sections."""

    def make(output="trial", **sections) -> TrialSpec:
        raw = {
            "model": {"name_or_path": "tiny-llama"},
            "data": {"source": "synthetic", "synthetic": {"num_train": 512, "num_eval": 128, "num_probe": 32}},
            "dpo": {"learning_rate": 5e-4, "per_device_train_batch_size": 16, "reports_per_epoch": 4},
            "output_dir": str(tmp_path / output),
            "cache_dir": model_cache,
        }
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        return TrialSpec.model_validate(raw)

    return make


FIGURES = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[FIGURES] = []


@pytest.fixture
def figures(request) -> list[str]:
    """Lines of measured figures a test wants shown: printed together at the end of the run."""
    return request.config.stash[FIGURES]


def pytest_terminal_summary(terminalreporter, config):
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)
