"""ASHA vs running the full grid, on the bundled synthetic benchmark with label noise.

    .venv/bin/python benchmarks/asha_vs_grid.py                    # 2 seeds, ~6 min on 2 cores
    .venv/bin/python benchmarks/asha_vs_grid.py --seeds 0 1 2 --label-noise 0.3

For each seed (data, noise and training seeds together) the 3 x 3 beta x learning_rate grid runs
twice: every trial to the end (FIFO), and with ASHA (grace 1 report, reduction factor 3 by default). Trial-steps
are the optimizer steps the trials really ran. Best = the sweet spot of the analysis (the metric is
the held-out accuracy on clean pairs; trials that drifted more than 1.4 nats from the reference are
left out, as in the demo). Prints JSON with per-seed figures and medians.
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


def one_sweep(scheduler: str, seed: int, args, cache: str, storage: str) -> dict:
    cfg = validate_sweep_config({
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
    t0 = time.perf_counter()
    result = run_sweep(cfg, log=lambda *_: None, progress=False)
    best = result.analysis.best
    return {"trial_steps": int(sum(r.history["step"].iloc[-1] for r in result.records if len(r.history))),
            "best_clean_accuracy": float(best["eval_rewards_accuracies"]) if best else None,
            "best_trial": {k: best[k] for k in ("beta", "learning_rate")} if best else None,
            "wall_s": round(time.perf_counter() - t0, 1),
            "statuses": result.analysis.table["status"].value_counts().to_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--label-noise", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--reduction-factor", type=float, default=3, help="ASHA keeps the top 1/rf at each rung")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    per_seed = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(ensure_tiny_llama(Path(tmp) / "models", log=None).parent)
        for seed in args.seeds:
            grid = one_sweep("fifo", seed, args, cache, f"{tmp}/fifo-{seed}")
            asha = one_sweep("asha", seed, args, cache, f"{tmp}/asha-{seed}")
            row = {"seed": seed, "grid": grid, "asha": asha,
                   "step_fraction": round(asha["trial_steps"] / grid["trial_steps"], 3),
                   "best_accuracy_difference": round(grid["best_clean_accuracy"] - asha["best_clean_accuracy"], 4)}
            per_seed.append(row)
            print(f"seed {seed}: ASHA used {row['step_fraction']:.0%} of the grid's trial-steps; best clean accuracy "
                  f"grid {grid['best_clean_accuracy']:.3f} vs ASHA {asha['best_clean_accuracy']:.3f}", file=sys.stderr)
    print(json.dumps({
        "benchmark": "asha_vs_grid", "cpus": os.cpu_count(), "label_noise": args.label_noise, "epochs": args.epochs,
        "reduction_factor": args.reduction_factor,
        "median_step_fraction": statistics.median(r["step_fraction"] for r in per_seed),
        "median_best_accuracy_difference": statistics.median(r["best_accuracy_difference"] for r in per_seed),
        "targets": {"step_fraction": "<= 0.5", "best_accuracy_difference": "<= 0.02"},
        "per_seed": per_seed,
    }, indent=2))


if __name__ == "__main__":
    main()
