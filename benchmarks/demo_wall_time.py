"""Wall time of the main job: `dpo-sweep run` (the 9-trial demo sweep) from the command line.

    .venv/bin/python benchmarks/demo_wall_time.py             # 3 runs, ~4 min on 2 CPU cores
    .venv/bin/python benchmarks/demo_wall_time.py --runs 1

Each run starts in a fresh directory (new Ray, new MLflow database) with tiny-llama already cached,
the way a user's second `dpo-sweep run` goes. Prints JSON: wall seconds per run and their median,
the trial statuses, the sweet spot line, and the target (300 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("dpo-sweep")
    subprocess.run([sys.executable, "-m", "trainables.tiny_model"], check=True, cwd=ROOT, capture_output=True)
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            out = subprocess.run([str(exe), "run"], cwd=tmp, capture_output=True, text=True, check=False,
                                 env={**os.environ})
            wall = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"run {i + 1} failed:\n{out.stderr[-3000:]}")
        lines = out.stdout.splitlines()
        statuses = next((ln for ln in lines if ln.startswith("9 trials")), "")
        sweet = next((ln for ln in lines if ln.startswith("Sweet spot")), "")
        runs.append({"wall_s": round(wall, 1), "trials": statuses, "sweet_spot": sweet})
        print(f"run {i + 1}/{args.runs}: {wall:.0f} s; {statuses}; {sweet}", file=sys.stderr)
    walls = [r["wall_s"] for r in runs]
    print(json.dumps({"benchmark": "demo_wall_time", "command": "dpo-sweep run", "cpus": os.cpu_count(),
                      "median_wall_s": statistics.median(walls), "target_s": 300, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
