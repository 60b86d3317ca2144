"""Preflight: every problem of a sweep found before Ray starts, all of them in one error.

    dpo-sweep validate my_sweep.yaml

Checks: the search space (named or inline; unknown keys with the closest valid name; every grid
or choice value and both bounds of a range validated as a trial config), the trial config, the
model path, the dataset rows, the report schedule against the data size, resources that can
never be satisfied (Tune would leave such trials PENDING forever), and the MLflow tracking URI.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import cluster
from orchestrator.cluster import ClusterView
from orchestrator.config import SweepConfig
from search_spaces import SPACES, candidate_values, grid_size, space_from_yaml
from trainables.config import ConfigError
from trainables.config_io import validate_trial_spec
from trainables.metrics import reported_metrics
from trainables.params import canonical_params, closest_param_key, resolve_param_key, spec_with_params
from trainables.tracking import is_local_uri

GIB = 1024**3


class PreflightError(ConfigError):
    pass


@dataclass
class Preflight:
    """What preflight resolved, so the sweep does not compute it twice."""

    param_space: dict[str, Any]
    num_trials: int | None  # None: sampled until num_samples
    tracking_uri: str
    gpu_per_trial: float = 0.0  # resolved ('auto' -> 1/k)
    train_rows: int = 0
    max_reports: int = 0
    notes: list[str] = field(default_factory=list)
    num_samples: int = 1  # what Tune is given: grid repeats become a seed axis instead
    dropped_rows: dict[str, int] = field(default_factory=dict)  # data.drop_invalid: reason -> rows, every trial


def seeds_for_repeats(cfg: SweepConfig, space: dict[str, Any]) -> tuple[dict[str, Any], int, list[str]]:
    """A grid repeated `num_samples` times would run identical configs, and identical configs give identical
    trials (every trial seeds itself): no replicates at all. Unless the space already varies the seed, the
    repeats become a `seed` axis with `num_samples` values, so each repeat is a real replicate."""
    n = cfg.search.num_samples
    if cfg.search.algorithm != "grid" or n == 1 or any(resolve_param_key(k) == "dpo.seed" for k in space):
        return space, n, []
    seeds = [cfg.trial.dpo.seed + i for i in range(n)]
    note = (f"search.num_samples={n} with a grid: the repeats run with seed {', '.join(map(str, seeds))} (dpo.seed), "
            "so each is a replicate; the analysis averages them")
    return {**space, "seed": {"grid_search": seeds}}, 1, [note]


def resolve_space(cfg: SweepConfig) -> tuple[dict[str, Any], list[str]]:
    space = cfg.search.space
    if isinstance(space, str):
        if space not in SPACES:
            import difflib

            guess = difflib.get_close_matches(space, list(SPACES), n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            return {}, [f"search.space: unknown named space {space!r}{hint} (named: {', '.join(SPACES)})"]
        return SPACES[space](), []
    return space_from_yaml(space), []


def colliding_keys(space: dict[str, Any]) -> list[str]:
    """Two keys of one space that set the same field ('beta' and 'dpo.beta'): which would win is anyone's guess,
    so neither does. After preflight every key goes by its canonical name (`canonical_param_key`)."""
    by_field: dict[str, list[str]] = {}
    for key in space:
        path = resolve_param_key(key)
        if path is not None:
            by_field.setdefault(path, []).append(key)
    return [f"search.space: {' and '.join(repr(k) for k in keys)} both set {path}; keep one of them"
            for path, keys in by_field.items() if len(keys) > 1]


def check_space(cfg: SweepConfig, space: dict[str, Any]) -> list[str]:
    base = cfg.trial.model_dump(mode="json")
    refused = trial_problems(base, {})  # the base trial itself, as TRL and transformers see it
    if refused:
        return [f"trial.{p}" for p in refused]
    problems = []
    for key, domain in space.items():
        path = resolve_param_key(key)
        if path is None:
            guess = closest_param_key(key)
            hint = f"did you mean '{guess}'?" if guess else "use a DPO knob name or a dotted trial path like lora.r"
            problems.append(f"search.space.{key}: unknown key; {hint}")
            continue
        for value in candidate_values(domain):
            for p in trial_problems(base, {key: value}):
                detail = p.split(": ", 1)[1] if p.startswith(path + ":") else p
                problems.append(f"search.space.{key}: value {value!r} is invalid: {detail}")
    if not problems:
        problems += check_combinations(base, space)
    if cfg.search.algorithm == "grid" and not any(isinstance(d, dict) and "grid_search" in d for d in space.values()):
        sampled = [k for k, d in space.items() if hasattr(d, "sample")]
        if sampled:
            problems.append(f"search.algorithm: 'grid' but {', '.join(sampled)} are sampled ranges, not grids; use "
                            "search.algorithm: random (with num_samples) or optuna, or give grid values")
    return problems


MAX_COMBINATIONS = 2000  # 2000 validations with their DPOConfig take ~1.5 s


def trial_problems(base: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """What is wrong with the trial `params` make of `base`: the config's own checks, then what TRL's
    DPOConfig and transformers' schedule refuse when built for real (`trainables.trainer.check_trainer_config`)."""
    from trainables.trainer import check_trainer_config

    try:
        check_trainer_config(validate_trial_spec(spec_with_params(base, params)))
    except ConfigError as e:
        return e.problems
    return []


def check_combinations(base: dict[str, Any], space: dict[str, Any], show: int = 3) -> list[str]:
    """Values valid one by one can clash (label smoothing with a loss that ignores it): check the
    cartesian product of every key's candidate values, when it is small enough."""
    import itertools

    keys = list(space)
    values = [candidate_values(space[k]) for k in keys]
    if math.prod(len(v) for v in values) > MAX_COMBINATIONS:
        return []
    bad = []
    for combo in itertools.product(*values):
        params = dict(zip(keys, combo, strict=True))
        found = trial_problems(base, params)
        if found:
            bad.append(f"search.space: the combination {params} is invalid: {'; '.join(found)}")
    if len(bad) > show:
        bad = [*bad[:show], f"search.space: ... and {len(bad) - show} more invalid combination(s)"]
    return bad


def check_tracking_for_cluster(uri: str, nodes: int, autoscales: bool) -> list[str]:
    """Trials on other nodes cannot write the driver's sqlite file (or local artifact paths)."""
    if (nodes > 1 or autoscales) and is_local_uri(uri):
        where = f"{nodes} nodes" if nodes > 1 else "nodes that start on demand"
        return [(f"tracking.uri: {uri} is local to this node, but the Ray cluster has {where} and trials on the "
                "others cannot reach it; run an MLflow server (mlflow server --host <internal address> --port "
                "5000 --backend-store-uri ... --artifacts-destination ...) and set tracking.uri, "
                "--tracking-uri or MLFLOW_TRACKING_URI to its http:// address")]
    return []


def check_tracking(uri: str) -> list[str]:
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        parent = db.parent if db.is_absolute() else Path.cwd() / db.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return [f"tracking.uri: cannot create {parent} for the MLflow database: {e.strerror}"]
        return []
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                if r.status != 200:
                    return [f"tracking.uri: {uri} answered /health with HTTP {r.status}; is it an MLflow server?"]
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            return [(f"tracking.uri: cannot reach the MLflow server at {uri} ({reason}); start it "
                    "(mlflow server --host 127.0.0.1 --port 5000) or fix tracking.uri / MLFLOW_TRACKING_URI")]
        return []
    if is_local_uri(uri):
        return [(f"tracking.uri: {uri!r} is a local path; MLflow 3 refuses file stores: use sqlite:///<abs path>/"
                "mlflow.db or an http(s):// server")]
    return []


def check_resources(cfg: SweepConfig, view: ClusterView) -> list[str]:
    """Requests `view` can never satisfy: Tune would leave such trials PENDING forever."""
    r = cfg.resources
    if view.joined and r.cluster_autoscales:
        return []  # nodes come up on demand: what is up now says nothing about what the sweep will get
    gpu = 1.0 if r.gpu_per_trial == "auto" else r.gpu_per_trial  # 'auto' asks for at most one GPU
    problems = []
    if gpu > 1 and gpu != int(gpu):
        problems.append(f"resources.gpu_per_trial: fractions above 1 are not schedulable, got {gpu}; "
                        "use a whole number or a fraction below 1")
    if gpu > 0 and view.gpus == 0:
        problems.append(f"resources.gpu_per_trial: {r.gpu_per_trial} GPU per trial, but {view.where} has no GPU; "
                        "Tune would leave every trial PENDING forever. Set resources.gpu_per_trial: 0, or join a "
                        "cluster with GPUs (--address)")
    elif gpu > view.gpus:
        problems.append(f"resources.gpu_per_trial: {r.gpu_per_trial} GPU per trial, but {view.where} has "
                        f"{view.gpus:g}")
    for name, amount in r.custom.items():
        have = view.custom.get(name, 0)
        if amount > have:
            problems.append(f"resources.custom.{name}: {amount:g} per trial, but {view.where} has {have:g} of it; "
                            f"start the nodes meant for trials with --resources '{{\"{name}\": 1000}}', or set "
                            "resources.cluster_autoscales: true if they start on demand")
    if r.cpu_per_trial > view.cpus:
        problems.append(f"resources.cpu_per_trial: {r.cpu_per_trial:g} CPUs per trial, but {view.where} has "
                        f"{view.cpus:g}")
    return problems


def gpu_memory_bytes(cfg: SweepConfig, view: ClusterView) -> int | None:
    if cfg.resources.gpu_memory_gib:
        return int(cfg.resources.gpu_memory_gib * GIB)
    return view.gpu_memory_bytes


def plan_gpu_packing(cfg: SweepConfig, space: dict[str, Any], gpu_bytes: int | None,
                     ) -> tuple[float, list[str], list[str]]:
    """(gpu_per_trial to request, problems, notes). `auto` packs as many trials per GPU as the memory
    estimate allows; an explicit fraction is checked against the same estimate."""
    from trainables.memory import estimate_trial_memory, trials_per_gpu

    r = cfg.resources
    if r.gpu_per_trial != "auto" and (r.gpu_per_trial == 0 or r.gpu_per_trial >= 1):
        return float(r.gpu_per_trial), [], []
    if gpu_bytes is None:
        if r.gpu_per_trial == "auto":
            return 1.0, [("resources.gpu_per_trial: 'auto' needs the GPU's memory; set resources.gpu_memory_gib "
                         "(e.g. 80 for an H100) when joining a cluster")], []
        return float(r.gpu_per_trial), [], [f"GPU memory unknown: packing {r.gpu_per_trial} GPU per trial unchecked"]
    spec = cfg.trial.model_copy(deep=True)
    spec.dpo.per_device_train_batch_size = _max_value(space, "per_device_train_batch_size",
                                                       spec.dpo.per_device_train_batch_size)
    spec.dpo.max_length = _max_value(space, "max_length", spec.dpo.max_length)
    est = estimate_trial_memory(spec)
    usable = gpu_bytes * (1 - r.gpu_headroom)
    fits = trials_per_gpu(est, gpu_bytes, r.gpu_headroom)
    where = f"a GPU has {gpu_bytes / GIB:.1f} GiB ({r.gpu_headroom:.0%} kept free)"
    if fits == 0:
        return 1.0, [(f"resources.gpu_per_trial: one trial needs about {est.describe()} but {where}; lower "
                     "per_device_train_batch_size or max_length, or use a larger GPU")], []
    if r.gpu_per_trial == "auto":
        k = min(fits, r.max_trials_per_gpu)
        return 1.0 / k, [], [f"GPU packing: {k} trial(s) per GPU; one trial needs about {est.describe()}; {where}"]
    k = round(1 / r.gpu_per_trial)
    if k * est.total > usable:
        return float(r.gpu_per_trial), [
            (f"resources.gpu_per_trial: {r.gpu_per_trial} packs {k} trials per GPU, which need about "
            f"{k * est.total / GIB:.1f} GiB ({k} x {est.describe()}) but {where}; use gpu_per_trial "
            f"{1 / fits:.3g} or 'auto'")], []
    return float(r.gpu_per_trial), [], [f"GPU packing: {k} trials per GPU, about {k * est.total / GIB:.1f} GiB"]


def check_metrics(cfg: SweepConfig) -> list[str]:
    known = reported_metrics(has_probes=cfg.trial.data.builtin_task is not None, evaluation=cfg.trial.evaluation)
    problems = []
    for name, value in (("search.metric", cfg.search.metric),
                        ("trial.reward_hacking.metric", cfg.trial.reward_hacking.metric)):
        if value not in known:
            problems.append(f"{name}: {value!r} is not a reported metric; choose one of {', '.join(sorted(known))}")
    return problems


def _max_value(space: dict[str, Any], key: str, default: Any) -> Any:
    values = [v for k, d in space.items() if resolve_param_key(k) == f"dpo.{key}" for v in candidate_values(d)]
    return max(values) if values else default


def check_generation(cfg: SweepConfig, data) -> list[str]:
    """The generation evaluation's prompts exist, and every reward function loads and scores two held-out rows
    (one number or None each) before any trial starts."""
    from trainables.config import ConfigError
    from trainables.generation import load_rewards, select_prompts, smoke_test_rewards

    ev = cfg.trial.evaluation
    try:
        rows = select_prompts(data.eval_full, ev.num_prompts)
        rewards = load_rewards(ev, device="cpu", conversational=data.conversational)
    except ConfigError as e:
        return [f"trial.{p}" for p in e.problems]
    return [f"trial.{p}" for p in smoke_test_rewards(rewards, rows, data.conversational)]


def check_data_and_model(cfg: SweepConfig, space: dict[str, Any], log):
    """(problems, the data as every trial will see it (None when it cannot load), most reports any trial makes)."""
    from trainables.data import DataError, load_preference_data
    from trainables.model import load_tokenizer, resolve_model_path

    spec = cfg.trial
    try:
        path = resolve_model_path(spec.model, spec.cache_dir, log=log)
    except FileNotFoundError as e:
        return [f"trial.{e}"], None, 0
    try:
        tokenizer = load_tokenizer(path, spec.model)
    except OSError as e:
        return [f"trial.model.name_or_path: cannot load the tokenizer of {spec.model.name_or_path!r}: {e}"], None, 0
    try:
        data = load_preference_data(spec.data, tokenizer, spec.dpo.max_length, spec.dpo.truncation_mode)
    except DataError as e:
        return [f"trial.data: {e}"], None, 0
    n = len(data.train)
    d = spec.dpo
    batch = _max_value(space, "per_device_train_batch_size", d.per_device_train_batch_size)
    accum = _max_value(space, "gradient_accumulation_steps", d.gradient_accumulation_steps)
    reports = _max_value(space, "reports_per_epoch", d.reports_per_epoch)
    epochs = _max_value(space, "num_train_epochs", d.num_train_epochs)
    steps_per_epoch = math.ceil(math.ceil(n / batch) / accum)
    problems = check_generation(cfg, data)
    if steps_per_epoch < reports:
        problems.append(f"trial.dpo.reports_per_epoch: {reports} reports per epoch, but with {n} training rows, "
                        f"batch {batch} and accumulation {accum} an epoch has {steps_per_epoch} optimizer steps; "
                        "lower reports_per_epoch or the batch/accumulation, or add data")
    return problems, data, reports * epochs


def run_preflight(cfg: SweepConfig, view: ClusterView | None = None, log=print) -> Preflight:
    """Raise PreflightError listing every problem, or return what was resolved.

    `view`: where the trials will run (`orchestrator.cluster`); this machine when None."""
    view = view or cluster.local_view()
    space, problems = resolve_space(cfg)
    problems += colliding_keys(space)
    problems += check_space(cfg, space)
    space_ok = not problems
    uri = cfg.tracking_uri
    problems += check_tracking(uri)
    if view.joined:
        problems += check_tracking_for_cluster(uri, view.nodes, cfg.resources.cluster_autoscales)
    problems += check_resources(cfg, view)
    problems += check_metrics(cfg)
    # The report schedule is checked against the space's values only once those are valid.
    data_problems, data, max_reports = check_data_and_model(cfg, space if space_ok else {}, log)
    problems += data_problems
    gpu_per_trial, packing_problems, notes = 0.0, [], []
    if not problems:  # the estimate loads the model's config: only once the model path is known good
        gpu_per_trial, packing_problems, notes = plan_gpu_packing(cfg, space, gpu_memory_bytes(cfg, view))
    problems += packing_problems
    if cfg.search.algorithm == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            problems.append("search.algorithm: optuna is not installed; pip install 'dpo-sweep[optuna]'")
    if problems:
        raise PreflightError(problems)
    n = grid_size(space) * cfg.search.num_samples if cfg.search.algorithm == "grid" else cfg.search.num_samples
    space, num_samples, seed_notes = seeds_for_repeats(cfg, canonical_params(space))
    if data.dropped:
        notes.append(f"{data.dropped_text()}; every trial trains on the {len(data.train)} rows left")
    if cfg.scheduler.kind == "halving" and max_reports:
        from orchestrator.schedulers import idle_reports_note  # Ray's schedulers: imported when a sweep halves

        note = idle_reports_note(n, cfg.scheduler.grace_period, max_reports, cfg.scheduler.reduction_factor)
        notes += [note] if note else []
    return Preflight(param_space=space, num_trials=n, tracking_uri=uri, train_rows=len(data.train),
                     max_reports=max_reports, gpu_per_trial=gpu_per_trial, notes=notes + seed_notes,
                     num_samples=num_samples, dropped_rows=data.dropped)
