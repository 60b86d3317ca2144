"""Sweep wall time with the reference log-probs and token ids shared (computed once per sweep)
vs TRL's default (every trial runs a reference forward pass in every step and tokenizes the data).

    .venv/bin/python benchmarks/shared_reference.py                 # 4 trials x 2 rounds, ~8 min on 2 cores
    .venv/bin/python benchmarks/shared_reference.py --rounds 3 --num-train 4000 --epochs 2

Same sweep both ways (FIFO, no early stopping, so both do the same optimizer steps), interleaved
rounds, each sweep in a fresh storage directory: the shared run pays for its precompute every time.
Prints JSON: median sweep wall seconds, median summed trial seconds (Ray's time_total_s), and ratios.
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


def one_sweep(shared: bool, args, cache: str, storage: str) -> dict:
    cfg = validate_sweep_config({
        "name": "bench-shared" if shared else "bench-own",
        "shared_reference": shared,
        "trial": {"cache_dir": cache,
                  "data": {"source": "synthetic", "synthetic": {"num_train": args.num_train, "num_eval": 200,
                                                                "num_probe": 64}},
                  "dpo": {"num_train_epochs": args.epochs, "reports_per_epoch": 1, "learning_rate": 5e-4}},
        "search": {"space": {"beta": {"grid": [0.1, 0.3]}, "learning_rate": {"grid": [2e-4, 5e-4]}}},
        "scheduler": {"kind": "fifo"},
        "storage": {"path": storage},
    })
    t0 = time.perf_counter()
    result = run_sweep(cfg, log=lambda *_: None, progress=False)
    wall = time.perf_counter() - t0
    trial_s = sum(float(r.history["time_total_s"].iloc[-1]) for r in result.records)
    return {"wall_s": wall, "trial_s": trial_s, "precompute_s": result.reference.seconds if result.reference else 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--num-train", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    runs: dict[str, list[dict]] = {"shared": [], "per_trial": []}
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(ensure_tiny_llama(Path(tmp) / "models", log=None).parent)
        for r in range(args.rounds):
            for shared in (False, True):
                key = "shared" if shared else "per_trial"
                res = one_sweep(shared, args, cache, f"{tmp}/{key}-{r}")
                runs[key].append(res)
                print(f"round {r + 1}/{args.rounds} {key}: sweep {res['wall_s']:.1f} s, trials {res['trial_s']:.1f} s",
                      file=sys.stderr)
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall_s", "trial_s", "precompute_s")}
           for k, v in runs.items()}
    print(json.dumps({
        "benchmark": "shared_reference", "cpus": os.cpu_count(), "trials_per_sweep": 4, "rounds": args.rounds,
        "num_train": args.num_train, "epochs": args.epochs,
        "median": {k: {m: round(x, 2) for m, x in v.items()} for k, v in med.items()},
        "sweep_wall_ratio_per_trial_over_shared": round(med["per_trial"]["wall_s"] / med["shared"]["wall_s"], 3),
        "trial_time_ratio_per_trial_over_shared": round(med["per_trial"]["trial_s"] / med["shared"]["trial_s"], 3),
        "target_sweep_wall_ratio": 1.3,
    }, indent=2))


if __name__ == "__main__":
    main()
