"""Seconds per optimizer step of the demo-size trial: 4-bit QLoRA vs bf16 / fp32 LoRA, each with and
without precomputed reference log-probs, measured side by side (interleaved rounds) in one run.

    .venv/bin/python benchmarks/step_time.py             # 3 rounds, ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/step_time.py --rounds 5 --num-train 1000

Prints one JSON object: per set-up the median seconds per optimizer step (training steps only; the
evaluation at the end is not timed), the median set-up seconds (model load + TRL init, which includes
the reference precompute when it is on), the median seconds of the whole trial, and ratios to the
4-bit QLoRA set-up without precompute.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import TrainerCallback

from trainables.config import TrialSpec
from trainables.tiny_model import ensure_tiny_llama
from trainables.trainer import build_trainer

SETUPS = {
    "qlora_nf4_bf16": {"quantization": "nf4", "compute_dtype": "bfloat16"},
    "lora_bf16": {"quantization": "none", "compute_dtype": "bfloat16"},
    "lora_fp32": {"quantization": "none", "compute_dtype": "float32"},
}


class StepTimer(TrainerCallback):
    def __init__(self):
        self.durations: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.durations.append(time.perf_counter() - self._t)


def one_run(model: dict, precompute: bool, num_train: int, cache: str, out: str) -> dict:
    spec = TrialSpec.model_validate({
        "model": {"name_or_path": "tiny-llama", **model},
        "data": {"source": "synthetic", "synthetic": {"num_train": num_train, "num_eval": 64, "num_probe": 0}},
        "dpo": {"learning_rate": 5e-4, "per_device_train_batch_size": 16, "reports_per_epoch": 1,
                "precompute_ref_log_probs": precompute},
        "output_dir": out, "cache_dir": cache,
    })
    t0 = time.perf_counter()
    trainer, _, _ = build_trainer(spec, lambda m, c: None, log=lambda *_: None)
    setup_s = time.perf_counter() - t0
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    total_s = time.perf_counter() - t0
    # The last step also evaluates and saves (on_step_end fires before that), the first warms caches up.
    steps = timer.durations[1:]
    return {"s_per_step": statistics.median(steps), "setup_s": setup_s, "total_s": total_s, "steps": len(timer.durations)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--num-train", type=int, default=1000, help="pairs (demo size: 1000 -> 63 steps of batch 16)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(ensure_tiny_llama(Path(tmp) / "cache", log=None).parent)
        runs: dict[str, list[dict]] = {}
        for r in range(args.rounds):
            for name, model in SETUPS.items():
                for precompute in (False, True):
                    key = f"{name}{'+precomputed_ref' if precompute else ''}"
                    res = one_run(model, precompute, args.num_train, cache, f"{tmp}/{key}-{r}")
                    runs.setdefault(key, []).append(res)
                    print(f"round {r + 1}/{args.rounds} {key}: {res['s_per_step'] * 1000:.1f} ms/step", file=sys.stderr)
    base = statistics.median(x["s_per_step"] for x in runs["qlora_nf4_bf16"])
    table = {}
    for key, rs in runs.items():
        med = statistics.median(x["s_per_step"] for x in rs)
        table[key] = {
            "median_s_per_step": round(med, 5),
            "median_setup_s": round(statistics.median(x["setup_s"] for x in rs), 3),
            "median_trial_s": round(statistics.median(x["total_s"] for x in rs), 3),
            "step_time_vs_qlora_nf4": round(med / base, 3),
            "steps": rs[0]["steps"],
        }
    print(json.dumps({"benchmark": "step_time", "machine": f"{platform.machine()} cpu x{torch.get_num_threads()}",
                      "torch": torch.__version__, "rounds": args.rounds, "num_train": args.num_train,
                      "results": table}, indent=2))


if __name__ == "__main__":
    main()
