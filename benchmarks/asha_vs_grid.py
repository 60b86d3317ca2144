"""Early stopping vs running the full grid, on the bundled synthetic benchmark with label noise.

    .venv/bin/python benchmarks/asha_vs_grid.py                    # 3 seeds x 3 schedulers, ~15 min on 2 cores
    .venv/bin/python benchmarks/asha_vs_grid.py --seeds 0 1 2 --label-noise 0.3 --schedulers halving
    .venv/bin/python benchmarks/asha_vs_grid.py --config smollm2 --seeds 0 --schedulers halving asha  # ~1 h

For each seed (data, noise and training seeds together) the 3 x 3 beta x learning_rate grid runs with
every trial to the end (fifo) and with each early-stopping scheduler (asha, halving; grace 1 report,
reduction factor 3 by default). Trial-steps are the optimizer steps the trials really ran. The answer
is the analysis' sweet-spot cell (the metric is the held-out accuracy on clean pairs; trials that
drifted more than 1.4 nats from the reference are left out, as in the demo): a scheduler agrees with
the grid when it names the same cell. `--config smollm2`: the real-model example sweep instead, with its own
grid, metric (answer exact rate) and scheduler settings. Prints JSON with per-seed figures and medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.config import validate_sweep_config
from orchestrator.sweep import run_sweep
from trainables.tiny_model import ensure_tiny_llama


def tiny_sweep(scheduler: str, seed: int, args, cache: str, storage: str):
    return validate_sweep_config({
        "name": f"bench-{scheduler}",
        "trial": {"cache_dir": cache,
                  "data": {"source": "synthetic", "synthetic": {"num_train": 1000, "num_eval": 200, "num_probe": 64,
                                                                "label_noise": args.label_noise, "seed": seed}},
                  "dpo": {"num_train_epochs": args.epochs, "reports_per_epoch": 4, "seed": seed}},
        # The demo's grid: tiny-llama's own learning rates (the named spaces hold a real model's).
        "search": {"space": {"beta": {"grid": [0.01, 0.1, 0.5]}, "learning_rate": {"grid": [5e-5, 5e-4, 5e-3]}}},
        "scheduler": {"kind": scheduler, "grace_period": 1, "reduction_factor": args.reduction_factor},
        "analysis": {"max_abs_logratio": 1.4},
        "storage": {"path": storage},
    })


def dump_records(path: Path, scheduler: str, seed: int, records) -> None:
    """Append a sweep's trials (params, error, every report) as one JSON line, for study offline."""
    with path.open("a") as f:
        f.write(json.dumps({"scheduler": scheduler, "seed": seed, "trials": [
            {"params": r.params, "error": r.error, "expected_reports": r.expected_reports,
             "history": json.loads(r.history.to_json(orient="records"))} for r in records]}, default=str) + "\n")


def one_sweep(scheduler: str, seed: int, args, cache: str, storage: str) -> dict:
    if args.config:  # a shipped real-model sweep as it is, but for the scheduler, the seeds and the storage
        from orchestrator.cli import SHIPPED_SWEEPS, shipped_config
        from orchestrator.config import load_sweep_config

        cfg = load_sweep_config(shipped_config(SHIPPED_SWEEPS[args.config]), [
            f"scheduler.kind={scheduler}", f"storage.path={storage}", f"trial.dpo.seed={seed}", f"name=bench-{scheduler}"])
        getattr(cfg.trial.data, cfg.trial.data.builtin_task).seed = seed  # the bundled task's questions, mistakes, noise
    else:
        cfg = tiny_sweep(scheduler, seed, args, cache, storage)
    t0 = time.perf_counter()
    result = run_sweep(cfg, log=lambda *_: None, progress=False)
    a = result.analysis
    if args.histories:
        dump_records(args.histories, scheduler, seed, result.records)
    cell = {k: float(v) for k, v in a.sweet_spot.values.items()} if a.sweet_spot else None
    return {"trial_steps": int(sum(r.history["step"].iloc[-1] for r in result.records if len(r.history))),
            "sweet_spot": cell, "sweet_spot_accuracy": a.sweet_spot.mean if a.sweet_spot else None,
            "wall_s": round(time.perf_counter() - t0, 1), "statuses": a.table["status"].value_counts().to_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--label-noise", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--reduction-factor", type=float, default=3, help="keep the top 1/rf at each rung")
    ap.add_argument("--schedulers", nargs="*", default=["asha", "halving"], choices=["asha", "halving"],
                    help="early-stopping schedulers to compare with the full grid (none: the grid only)")
    ap.add_argument("--config", choices=["smollm2"], help="a shipped real-model sweep instead of the tiny grid "
                    "(its own data, grid, metric and scheduler settings; --label-noise, --epochs and "
                    "--reduction-factor do not apply)")
    ap.add_argument("--histories", type=Path, help="append every sweep's trial histories here (JSON lines)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    per_seed = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(ensure_tiny_llama(Path(tmp) / "models", log=None).parent)
        for seed in args.seeds:
            grid = one_sweep("fifo", seed, args, cache, f"{tmp}/fifo-{seed}")
            row = {"seed": seed, "grid": grid}
            for kind in args.schedulers:
                run = one_sweep(kind, seed, args, cache, f"{tmp}/{kind}-{seed}")
                run["step_fraction"] = round(run["trial_steps"] / grid["trial_steps"], 3)
                run["same_cell"] = run["sweet_spot"] == grid["sweet_spot"]
                row[kind] = run
                print(f"seed {seed}: {kind} used {run['step_fraction']:.0%} of the grid's trial-steps; sweet spot "
                      f"{run['sweet_spot']} vs the grid's {grid['sweet_spot']} ({'same' if run['same_cell'] else 'other'}"
                      f" cell); wall {run['wall_s']} s vs {grid['wall_s']} s", file=sys.stderr)
            per_seed.append(row)
    print(json.dumps({
        "benchmark": "asha_vs_grid", "config": args.config or "tiny grid", "cpus": os.cpu_count(),
        **({} if args.config else {"label_noise": args.label_noise, "epochs": args.epochs,
                                   "reduction_factor": args.reduction_factor}),
        "median_step_fraction": {k: statistics.median(r[k]["step_fraction"] for r in per_seed) for k in args.schedulers},
        "same_cell_as_grid": {k: f"{sum(r[k]['same_cell'] for r in per_seed)}/{len(per_seed)}" for k in args.schedulers},
        "median_wall_ratio_to_grid": {k: statistics.median(r[k]["wall_s"] / r["grid"]["wall_s"] for r in per_seed)
                                      for k in args.schedulers},
        "targets": {"step_fraction": "<= 0.4", "same_cell_as_grid": "every seed"},
        "per_seed": per_seed,
    }, indent=2))


if __name__ == "__main__":
    main()
