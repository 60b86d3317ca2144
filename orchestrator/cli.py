"""The `dpo-sweep` command line.

    dpo-sweep run                                   # the built-in demo sweep, offline, on a laptop CPU
    dpo-sweep run smollm2                           # the real-model example: SmolLM2-135M-Instruct, ~16 min on CPU
    dpo-sweep run my_sweep.yaml --set search.num_samples=3 --address auto
    dpo-sweep validate my_sweep.yaml                # preflight only: every problem at once
    dpo-sweep spaces                                # the named search spaces
    dpo-sweep trial                                 # one trial with the defaults (tiny-llama, synthetic data)
    dpo-sweep trial my.yaml --set dpo.beta=0.2      # a YAML trial config plus overrides
    dpo-sweep trial --resume dpo-sweep-output/trial/checkpoint-32 my.yaml

Environment read here and passed down (nowhere else reads it):
    DPO_SWEEP_CACHE       where built-in models (tiny-llama, converted GGUF files) are cached (~/.cache/dpo-sweep)
    MLFLOW_TRACKING_URI   tracking server when neither --tracking-uri nor tracking.uri is given
    MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN   server credentials, handed to trials through Ray's
                          runtime env; never written to a config, parameter, tag or artifact
    RAY_ADDRESS           a running Ray cluster to join when --address is not given
    RAY_JOB_CONFIG_JSON_ENV_VAR   set by Ray in a job's driver: variables its runtime env already carries
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import resources
from pathlib import Path

from trainables.config import ConfigError, InputError
from trainables.config_io import load_trial_spec
from trainables.tracking import CREDENTIAL_VARS, redact_uri
from trainables.trial import TrialOutOfMemory

DEMO_SWEEP = "demo.yaml"


def shipped_config(name: str) -> Path:
    return Path(str(resources.files("orchestrator") / "configs" / name))


SHIPPED_SWEEPS = {"demo": DEMO_SWEEP, "smollm2": "smollm2.yaml"}


def sweep_config_path(config: str | None) -> Path:
    """A YAML path, or the name of a shipped sweep ('demo', 'smollm2'); no config is the demo."""
    if config is None:
        return shipped_config(DEMO_SWEEP)
    if config in SHIPPED_SWEEPS and not Path(config).exists():
        return shipped_config(SHIPPED_SWEEPS[config])
    return Path(config)


class MetricPrinter:
    """`report` for a trial run from the terminal: one line per report."""

    def __init__(self, out=sys.stdout):
        self.start = time.monotonic()
        self.out = out

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        parts = [f"step {metrics['step']:>5}", f"epoch {metrics['epoch']:.2f}"]
        for key, label in (("eval_rewards_accuracies", "eval acc"), ("eval_rewards_margins", "margin"),
                           ("eval_loss", "eval loss"), ("eval_logps_chosen", "chosen logp"),
                           ("answer_exact_rate", "answers exact"), ("train_loss", "train loss")):
            if key in metrics:
                parts.append(f"{label} {metrics[key]:.3f}")
        parts.append(f"{time.monotonic() - self.start:6.1f}s")
        if metrics.get("reward_hack_flag"):
            parts.append(f"REWARD-HACKING FLAG ({metrics.get('reward_hack_signal')})")
        print(" | ".join(parts), file=self.out, flush=True)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _with_cache(spec):
    """DPO_SWEEP_CACHE as the tiny-llama cache of a trial config that names none."""
    cache = os.environ.get("DPO_SWEEP_CACHE")
    if cache and spec.cache_dir is None:
        spec.cache_dir = cache
    return spec


def cmd_trial(args: argparse.Namespace) -> int:
    spec = _with_cache(load_trial_spec(args.config, args.set))
    resume = str(Path(args.resume).resolve()) if args.resume else None
    if resume and not (Path(resume) / "trainer_state.json").is_file():
        raise ConfigError([f"--resume {args.resume!r}: not a trial checkpoint (no trainer_state.json inside)"])

    from trainables.model import resolve_compute_dtype
    from trainables.trial import run_trial

    d = spec.dpo
    dtype = resolve_compute_dtype(spec.model.compute_dtype)
    dtype_note = f"{dtype}, from auto" if spec.model.compute_dtype == "auto" else dtype
    _log(f"[trial] model {spec.model.name_or_path} ({spec.model.quantization}, compute {dtype_note}), LoRA "
         f"r={spec.lora.r}; "
         f"beta {d.beta}, lr {d.learning_rate:g}, epochs {d.num_train_epochs}, accumulation "
         f"{d.gradient_accumulation_steps}, label smoothing {d.label_smoothing} ({d.loss_type})")
    result = run_trial(spec, MetricPrinter(), resume_from=resume, log=_log)
    m = result.last_metrics
    acc = m.get("eval_rewards_accuracies")
    _log(f"[trial] done: {result.reports} report(s); final held-out reward accuracy "
         f"{acc if acc is None else round(acc, 3)}; adapter and trainer state in {result.final_checkpoint}")
    return 0


def _sweep_config(args: argparse.Namespace):
    from orchestrator.config import load_sweep_config

    cfg = load_sweep_config(sweep_config_path(args.config), args.set)
    _with_cache(cfg.trial)
    uri = args.tracking_uri or (None if cfg.tracking.uri else os.environ.get("MLFLOW_TRACKING_URI"))
    if uri:
        cfg.tracking.uri = uri
    return cfg


def _credentials_for_workers() -> dict[str, str]:
    """MLflow credentials of this environment, for Ray to hand to every trial. Inside a Ray job the
    job's runtime env already reaches every worker, and Ray refuses the same variable twice."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    from_job = ((job.get("runtime_env") or {}).get("env_vars") or {}).keys()
    return {k: os.environ[k] for k in CREDENTIAL_VARS if k in os.environ and k not in from_job}


def _address(args: argparse.Namespace) -> str | None:
    return args.address or os.environ.get("RAY_ADDRESS") or None


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.cluster import view_for
    from orchestrator.preflight import run_preflight

    cfg = _sweep_config(args)
    pre = run_preflight(cfg, view_for(_address(args)), log=_log)
    for note in pre.notes:
        print(note)
    trials = pre.num_trials or cfg.search.num_samples
    print(f"OK: {trials} trial(s) over {', '.join(pre.param_space) or 'no swept keys'}; {pre.train_rows} training "
          f"rows; up to {pre.max_reports} reports per trial; tracking {pre.tracking_uri}")
    return 0


def cmd_spaces(args: argparse.Namespace) -> int:
    from search_spaces import SPACES, grid_size

    for name, fn in SPACES.items():
        space = fn()
        keys = ", ".join(space)
        size = grid_size(space)
        kind = f"{size}-point grid" if all(isinstance(d, (dict, int, float, str)) for d in space.values()) \
            else "sampled (set search.num_samples)"
        print(f"{name:14s} {kind:32s} {keys}\n{'':14s} {(fn.__doc__ or '').strip()}")
    return 0


def print_result(result, experiment: str) -> int:
    a = result.analysis
    shown = [c for c in a.table.columns if c not in ("trial",)]
    print("\nResults (" + a.metric + " at each trial's last report):")
    print(a.table[["trial", *shown]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("\n" + a.summary)
    print(f"\nReport: {a.reports[0]}" if a.reports else "")
    print(f"Plots and table: {a.table_path.parent}")
    for name, path in a.plots.items():
        print(f"  {name:20s} {path}")
    uri = redact_uri(result.tracking_uri)
    # MLflow 3 opens a bare experiment link on its GenAI page; the runs table needs the workflow type.
    runs_page = f"#/experiments/{result.experiment_id}/runs?workflowType=machine_learning"
    ui = (f"mlflow ui --backend-store-uri {uri}   # then open http://127.0.0.1:5000/{runs_page}"
          if uri.startswith("sqlite:") else f"open {uri.rstrip('/')}/{runs_page}")
    print(f"\nMLflow: experiment {experiment!r}, parent run {result.parent_run_id}\n  {ui}")
    print(f"Ray results: {result.experiment_path}")
    if not result.tracking_complete:
        print(f"\nMLflow is incomplete (server unreachable at the end); when it is back:\n"
              f"  dpo-sweep sync-mlflow {result.experiment_path}")
        return 3
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.sweep import run_sweep

    cfg = _sweep_config(args)
    result = run_sweep(cfg, address=_address(args), log=_log, worker_env=_credentials_for_workers())
    return print_result(result, cfg.experiment)


def _state_and_config(args: argparse.Namespace):
    from orchestrator.state import SweepState, find_experiment

    state = SweepState.load(find_experiment(args.experiment, args.storage, log=_log))
    cfg = state.sweep_config()
    _with_cache(cfg.trial)
    if args.tracking_uri:
        cfg.tracking.uri = args.tracking_uri
    elif "***@" in (cfg.tracking.uri or ""):
        raise ConfigError([(f"tracking.uri: {cfg.tracking.uri} had credentials, which dpo-sweep never stores; pass "
                           "--tracking-uri (or MLFLOW_TRACKING_USERNAME/_PASSWORD with a plain URI)")])
    return state, cfg


def cmd_resume(args: argparse.Namespace) -> int:
    from orchestrator.sweep import run_sweep

    state, cfg = _state_and_config(args)
    result = run_sweep(cfg, address=_address(args), log=_log, worker_env=_credentials_for_workers(), resume=state,
                       retry_failed=args.retry_failed)
    return print_result(result, cfg.experiment)


def cmd_sync_mlflow(args: argparse.Namespace) -> int:
    from orchestrator.records import load_results
    from orchestrator.sweep import finish_sweep

    state, cfg = _state_and_config(args)
    grid = load_results(state.experiment_path)
    _, analysis, counts = finish_sweep(cfg, state, grid, cfg.tracking_uri, log=_log,
                                       tracking_patience_s=args.patience)
    if counts is None:
        return 3
    print(f"{counts.describe()}; parent run {state.parent_run_id} closed; analysis of {len(analysis.table)} trial(s) "
          "logged to it")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.records import load_results
    from orchestrator.sweep import build_analysis, close_tracking
    from orchestrator.tracking_sync import log_analysis
    from trainables.tracking import make_client

    state, cfg = _state_and_config(args)
    _, analysis = build_analysis(cfg, state, load_results(state.experiment_path))
    html_path, md_path = analysis.reports
    print(f"{analysis.summary}\n\nReport: {html_path}\n        {md_path}")
    client = make_client(cfg.tracking_uri)
    logged = close_tracking(lambda: log_analysis(client, state.parent_run_id, analysis), "logging the report", state,
                            args.patience, log=_log)
    if logged is None:
        return 3
    print(f"Logged {logged} file(s) to MLflow run {state.parent_run_id} (artifacts: analysis/)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dpo-sweep",
        description="Hyperparameter sweeps of QLoRA DPO fine-tuning (Ray Tune with early stopping, TRL, bitsandbytes, MLflow).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'dpo-sweep COMMAND --help' for the options of a command.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, shipped: bool = True):
        what = ("a sweep YAML, or a shipped sweep: 'demo' (the default: tiny-llama, synthetic task) or 'smollm2' "
                "(SmolLM2-135M-Instruct on the arithmetic chat task)") if shipped else "a trial YAML"
        sp.add_argument("config", nargs="?", help=f"{what} (optional)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, dotted path, YAML value (repeatable): --set dpo.beta=0.2")

    def sweep_flags(sp):
        sp.add_argument("--address", help="join a running Ray cluster ('auto' or host:port; default: start a "
                                          "local Ray, or RAY_ADDRESS)")
        sp.add_argument("--tracking-uri", help="MLflow tracking URI (default: tracking.uri, MLFLOW_TRACKING_URI, "
                                               "else sqlite:///<storage.path>/mlflow.db)")

    run = sub.add_parser("run", help="run a sweep (the built-in offline demo sweep when no config is given)",
                         description="Run a hyperparameter sweep with Ray Tune, weak trials stopped early (synchronous successive halving by "
                                     "default, or ASHA), tracked in MLflow. With no "
                                     "config: the demo, a 3 x 3 beta x learning_rate grid on tiny-llama (4-bit) and "
                                     "the bundled synthetic task, offline, in about a minute on a laptop CPU. Ends "
                                     "with the results table, the sweet spot, the plots and the `mlflow ui` command.")
    common(run)
    sweep_flags(run)
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="preflight a sweep config without running it",
                              description="Check a sweep config before anything starts: search-space keys and "
                                          "values, the trial config, model path, dataset rows, resources and the "
                                          "MLflow URI. Every problem is reported at once.")
    common(validate)
    sweep_flags(validate)
    validate.set_defaults(func=cmd_validate)

    def sweep_command(name: str, func, help_text: str, description: str, patience: float | None = None):
        """A command on an existing sweep, named by its directory, run name or sweep name."""
        sp = sub.add_parser(name, help=help_text, description=description)
        sp.add_argument("experiment", help="the sweep: its Ray experiment directory (printed by `run` as 'Ray "
                                           "results'), its run name, or its sweep/MLflow experiment name (latest)")
        sp.add_argument("--storage", default="dpo-sweep-output",
                        help="where to look a sweep up by name (default: ./dpo-sweep-output)")
        sp.add_argument("--tracking-uri", help="MLflow tracking URI, if not the one the sweep was started with")
        if patience is not None:
            sp.add_argument("--patience", type=float, default=patience,
                            help=f"seconds to keep retrying an unreachable tracking server (default {patience:g})")
        sp.set_defaults(func=func)
        return sp

    resume = sweep_command(
        "resume", cmd_resume, "finish a sweep whose driver was stopped or crashed",
        "Continue a sweep after its driver died (killed, lost node, Ctrl-C): finished trials are kept and not "
        "re-run, interrupted trials continue from their last checkpoints, pending ones start; the same MLflow parent "
        "run is reused and closed at the end, and the analysis covers every trial.")
    resume.add_argument("--address", help="join a running Ray cluster (default: start a local Ray, or RAY_ADDRESS)")
    resume.add_argument("--retry-failed", action="store_true",
                        help="also resume trials that failed (from their last checkpoints); default: keep them failed")
    sweep_command(
        "sync-mlflow", cmd_sync_mlflow, "rebuild a sweep's MLflow runs and metrics from Ray's results",
        "Make MLflow agree with Ray's results of a sweep: create missing child runs, add missing steps, set every "
        "trial's final status and best adapter, log the analysis and close the parent run. Nothing is re-run; "
        "running it twice changes nothing. Use it after a tracking outage or against a new server.", patience=60)
    sweep_command(
        "report", cmd_report, "regenerate a sweep's report (HTML + Markdown) from Ray's results",
        "Rebuild a finished (or interrupted) sweep's analysis and report from Ray's results, without re-running "
        "anything: the recommendation in plain words, the sweet spot and how sure it is, the beta x learning-rate "
        "ANOVA, knob sensitivity, reward-hacking flags, the plots and the results table. Writes report.html "
        "(self-contained, plots embedded) and report.md beside the analysis and logs them to the sweep's parent "
        "MLflow run.", patience=30)

    spaces = sub.add_parser("spaces", help="list the named search spaces")
    spaces.set_defaults(func=cmd_spaces)

    trial = sub.add_parser("trial", help="run one DPO trial without Ray, printing its metrics as it goes",
                           description="Run one QLoRA DPO trial without Ray. Each report line shows the held-out "
                                       "reward accuracy, margin and loss, the answer quality (bundled tasks), and "
                                       "the train loss; a checkpoint is saved at every report.")
    common(trial, shipped=False)
    trial.add_argument("--resume", metavar="CHECKPOINT_DIR",
                       help="continue from a checkpoint directory written by an earlier run of the same config")
    trial.set_defaults(func=cmd_trial)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        _log(f"dpo-sweep: invalid configuration: {e}")
        return 2
    except InputError as e:
        # Bad rows, a model or sweep that cannot be found: the message names the row, field or path and the fix.
        _log(f"dpo-sweep: {e}")
        return 2
    except TrialOutOfMemory as e:
        _log(f"dpo-sweep: {e}")
        return 1
    except KeyboardInterrupt:
        _log("dpo-sweep: interrupted; checkpoints written so far are kept")
        return 130


if __name__ == "__main__":
    sys.exit(main())
