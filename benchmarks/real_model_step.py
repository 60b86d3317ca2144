"""Seconds per optimizer step of a real model on this machine: `smollm2-135m` (SmolLM2-135M-Instruct)
on the arithmetic chat task, batch 8, side by side in one run (interleaved rounds).

Set-ups: NF4 with bf16 compute (what `compute_dtype: auto` picks on a CPU with bf16 instructions),
NF4 with fp32 compute (its pick on other CPUs), no quantization in fp32; each with TRL's per-step
reference pass and with the sweep's shared reference (token ids and reference log-probs computed
once). Two more rows repeat the NF4 set-ups with TRL's own LM head (every position projected, as
TRL does off Triton devices), to show what projecting only the completion tokens saves
(trainables/trainer.py).

    .venv/bin/python benchmarks/real_model_step.py                  # 3 rounds, ~25 min on 2 CPU cores
    .venv/bin/python benchmarks/real_model_step.py --rounds 1 --steps 3 --form long

Prints one JSON object: per set-up the median seconds per optimizer step (the first step of each
run and the evaluation are not timed), its ratio to the fastest set-up, and the default's ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import trl.trainer.utils as trl_utils

from benchmarks.step_time import StepTimer
from orchestrator.prepare import build_shared_reference
from trainables import trl_patches
from trainables.config import TrialSpec
from trainables.model import resolve_compute_dtype, resolve_model_path
from trainables.trainer import build_trainer

SETUPS = {
    "nf4_bf16": {"quantization": "nf4", "compute_dtype": "bfloat16"},
    "nf4_fp32": {"quantization": "nf4", "compute_dtype": "float32"},
    "none_fp32": {"quantization": "none", "compute_dtype": "float32"},
}
DEFAULT = f"nf4_{'fp32' if resolve_compute_dtype('auto') == 'float32' else 'bf16'}"


def make_spec(model: dict, args, out: str, cache: str) -> TrialSpec:
    return TrialSpec.model_validate({
        "model": {"name_or_path": "smollm2-135m", **model},
        # Steps + 1 batches of 8; 8 eval pairs and no probes: evaluation is not what is timed.
        "data": {"source": "arithmetic", "arithmetic": {"num_train": 8 * (args.steps + 1), "num_eval": 8,
                                                        "num_probe": 0, "form": args.form}},
        "dpo": {"learning_rate": 1e-4, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
                "max_length": 160, "reports_per_epoch": 1},
        "output_dir": out, "cache_dir": cache,
    })


def one_run(spec: TrialSpec, shared: str | None, full_lm_head: bool) -> dict:
    trl_utils._use_triton = trl_patches.original_use_triton if full_lm_head else \
        trl_patches.project_labelled_positions_only
    try:
        t0 = time.perf_counter()
        trainer, _, _ = build_trainer(spec, lambda m, c: None, log=lambda *_: None, shared_reference=shared)
        setup_s = time.perf_counter() - t0
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.train()
    finally:
        trl_utils._use_triton = trl_patches.project_labelled_positions_only
    return {"s_per_step": statistics.median(timer.durations[1:]), "setup_s": setup_s, "steps": len(timer.durations)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is not timed)")
    ap.add_argument("--form", choices=("short", "long"), default="short", help="arithmetic answer form")
    ap.add_argument("--cache", default=None, help="model cache (default: DPO_SWEEP_CACHE or ~/.cache/dpo-sweep)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--only", default=None, help="run only set-ups whose name contains this text")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    cache = args.cache or os.environ.get("DPO_SWEEP_CACHE")
    if args.threads:
        torch.set_num_threads(args.threads)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        resolve_model_path(make_spec({}, args, tmp, cache).model, cache)  # convert the GGUF once, untimed
        plan = [(f"{name}+{ref}", model, ref, False) for name, model in SETUPS.items()
                for ref in ("trl_reference", "shared_reference")]
        plan += [(f"{name}+trl_reference+full_lm_head", SETUPS[name], "trl_reference", True)
                 for name in ("nf4_bf16", "nf4_fp32")]
        plan = [p for p in plan if not args.only or args.only in p[0]]
        shared_dirs: dict[str, str] = {}
        for r in range(args.rounds):
            for key, model, ref, full_head in plan:
                spec = make_spec(model, args, f"{tmp}/{key}-{r}", cache)
                shared = None
                if ref == "shared_reference":
                    name = key.split("+")[0]
                    if name not in shared_dirs:
                        shared_dirs[name] = str(build_shared_reference(spec, f"{tmp}/refcache", log=lambda *_: None).path)
                    shared = shared_dirs[name]
                res = one_run(spec, shared, full_head)
                runs.setdefault(key, []).append(res)
                print(f"round {r + 1}/{args.rounds} {key}: {res['s_per_step']:.2f} s/step", file=sys.stderr,
                      flush=True)
    medians = {k: statistics.median(x["s_per_step"] for x in rs) for k, rs in runs.items()}
    fastest = min(medians.values())
    table = {k: {"median_s_per_step": round(v, 2), "vs_fastest": round(v / fastest, 2),
                 "runs_s_per_step": [round(x["s_per_step"], 2) for x in runs[k]],
                 "median_setup_s": round(statistics.median(x["setup_s"] for x in runs[k]), 1)}
             for k, v in medians.items()}
    default_key = f"{DEFAULT}+shared_reference"  # what a sweep runs by default on this machine
    if default_key not in medians:
        default_key = min(medians, key=medians.get)
    print(json.dumps({
        "benchmark": "real_model_step", "model": "smollm2-135m", "form": args.form, "batch": 8,
        "machine": f"{platform.machine()} cpu x{torch.get_num_threads()}", "torch": torch.__version__,
        "rounds": args.rounds, "timed_steps_per_run": args.steps - 1,
        "default": default_key, "default_vs_fastest": round(medians[default_key] / fastest, 2),
        "results": table}, indent=2))


if __name__ == "__main__":
    main()
