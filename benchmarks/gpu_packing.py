"""Aggregate training throughput with k trials packed on one GPU, for k = 1, 2, 4, 8 (GPU machines only).

    .venv/bin/python benchmarks/gpu_packing.py                       # tiny-llama, fast
    .venv/bin/python benchmarks/gpu_packing.py --model /models/qwen2-0.5b --num-train 1024 --batch 8

Starts k plain trial processes at once on CUDA device 0 (no Ray: the packing itself is what is
measured), each a real 4-bit QLoRA DPO trial with the reference log-probs precomputed, and reports
aggregate samples/s = k x pairs x epochs / wall seconds of the slowest process, and the ratio to
k = 1. Anchor (shared/DESIGN.md): 8 plain TRL QLoRA processes on one H100 gave 5.1x one.
Each process also reports torch.cuda.max_memory_allocated beside trainables.memory's estimate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
from trainables.config import TrialSpec
from trainables.memory import estimate_trial_memory
from trainables.trainer import build_trainer
spec = TrialSpec.model_validate(json.loads(sys.argv[1]))
trainer, _, _ = build_trainer(spec, lambda m, c: None, log=lambda *a: None)
torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
trainer.train()
seconds = time.perf_counter() - t0
est = estimate_trial_memory(spec)
print(json.dumps({"train_s": seconds, "max_allocated": torch.cuda.max_memory_allocated(),
                  "estimated_allocated": est.allocated}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--num-train", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_packing: no CUDA GPU here; this benchmark needs one (see the closing notes for CPU figures)")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.ks:
            procs = []
            t0 = time.perf_counter()
            for i in range(k):
                spec = {"model": {"name_or_path": args.model},
                        "data": {"source": "synthetic", "synthetic": {"num_train": args.num_train, "num_eval": 64,
                                                                      "num_probe": 0}},
                        "dpo": {"per_device_train_batch_size": args.batch, "max_length": args.max_length,
                                "reports_per_epoch": 1, "precompute_ref_log_probs": True},
                        "reward_hacking": {"enabled": False},
                        "output_dir": f"{tmp}/k{k}-{i}"}
                procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(spec)], cwd=ROOT,
                                              stdout=subprocess.PIPE, text=True))
            outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
            wall = time.perf_counter() - t0
            slowest = max(o["train_s"] for o in outs)
            rows[k] = {"aggregate_samples_per_s": round(k * args.num_train / slowest, 1),
                       "wall_s_with_startup": round(wall, 1),
                       "max_allocated_gib": round(max(o["max_allocated"] for o in outs) / 2**30, 3),
                       "estimated_allocated_gib": round(outs[0]["estimated_allocated"] / 2**30, 3)}
            print(f"k={k}: {rows[k]}", file=sys.stderr)
    base = rows[args.ks[0]]["aggregate_samples_per_s"]
    for r in rows.values():
        r["vs_k1"] = round(r["aggregate_samples_per_s"] / base, 2)
    print(json.dumps({"benchmark": "gpu_packing", "gpu": torch.cuda.get_device_name(0), "model": args.model,
                      "batch": args.batch, "max_length": args.max_length, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
