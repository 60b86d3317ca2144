"""The `dpo-sweep` command line.

    dpo-sweep run                                   # the built-in demo, offline, on a laptop CPU
    dpo-sweep trial                                 # one trial with the defaults (tiny-llama, synthetic data)
    dpo-sweep trial my.yaml --set dpo.beta=0.2      # a YAML trial config plus overrides
    dpo-sweep trial --resume dpo-sweep-output/trial/checkpoint-32 my.yaml

Environment read here and passed down (nowhere else reads it):
    DPO_SWEEP_CACHE   where the built-in tiny-llama is cached (default ~/.cache/dpo-sweep)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from importlib import resources
from pathlib import Path

from trainables.config import ConfigError, load_trial_spec
from trainables.data import DataError

DEMO_TRIAL = "demo-trial.yaml"


def shipped_config(name: str) -> Path:
    return Path(str(resources.files("orchestrator") / "configs" / name))


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
        print(" | ".join(parts), file=self.out, flush=True)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_trial(args: argparse.Namespace) -> int:
    spec = load_trial_spec(args.config, args.set)
    cache = os.environ.get("DPO_SWEEP_CACHE")
    if cache and spec.cache_dir is None:
        spec.cache_dir = cache
    resume = str(Path(args.resume).resolve()) if args.resume else None
    if resume and not (Path(resume) / "trainer_state.json").is_file():
        raise ConfigError([f"--resume {args.resume!r}: not a trial checkpoint (no trainer_state.json inside)"])

    from trainables.trial import run_trial

    d = spec.dpo
    _log(f"[trial] model {spec.model.name_or_path} ({spec.model.quantization}), LoRA r={spec.lora.r}; "
         f"beta {d.beta}, lr {d.learning_rate:g}, epochs {d.num_train_epochs}, accumulation "
         f"{d.gradient_accumulation_steps}, label smoothing {d.label_smoothing} ({d.loss_type})")
    result = run_trial(spec, MetricPrinter(), resume_from=resume, log=_log)
    m = result.last_metrics
    acc = m.get("eval_rewards_accuracies")
    _log(f"[trial] done: {result.reports} report(s); final held-out reward accuracy "
         f"{acc if acc is None else round(acc, 3)}; adapter and trainer state in {result.final_checkpoint}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    # Until the sweep lands this runs the single demo trial: the same code path every sweep trial will take.
    args.config = args.config or str(shipped_config(DEMO_TRIAL))
    args.resume = None
    return cmd_trial(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dpo-sweep",
        description="Hyperparameter sweeps of QLoRA DPO fine-tuning (Ray Tune + ASHA, TRL, bitsandbytes, MLflow).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'dpo-sweep COMMAND --help' for the options of a command.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp):
        sp.add_argument("config", nargs="?", help="YAML config (optional: defaults are the built-in demo)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, dotted path, YAML value (repeatable): --set dpo.beta=0.2")

    run = sub.add_parser("run", help="run the main job (built-in offline demo when no config is given)",
                         description="Run the main job. With no config: the built-in demo on tiny-llama and "
                                     "the bundled synthetic task, offline, in about a minute on a laptop CPU.")
    common(run)
    run.set_defaults(func=cmd_run)

    trial = sub.add_parser("trial", help="run one DPO trial without Ray, printing its metrics as it goes",
                           description="Run one QLoRA DPO trial without Ray. Each report line shows the held-out "
                                       "reward accuracy, margin and loss, the answer quality (synthetic data), and "
                                       "the train loss; a checkpoint is saved at every report.")
    common(trial)
    trial.add_argument("--resume", metavar="CHECKPOINT_DIR",
                       help="continue from a checkpoint directory written by an earlier run of the same config")
    trial.set_defaults(func=cmd_trial)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Library deprecation chatter (TRL's own DPOConfig trips transformers' renames) is not the user's to fix.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        return args.func(args)
    except ConfigError as e:
        _log(f"dpo-sweep: invalid configuration: {e}")
        return 2
    except (DataError, FileNotFoundError) as e:
        # Bad rows and missing model/data paths: the messages already name the row or field and the fix.
        _log(f"dpo-sweep: {e}")
        return 2
    except KeyboardInterrupt:
        _log("dpo-sweep: interrupted; checkpoints written so far are kept")
        return 130


if __name__ == "__main__":
    sys.exit(main())
