"""Old path against new, side by side: whole sweeps (`dpo-sweep run <config>`), interleaved rounds.

    .venv/bin/python benchmarks/resident_sweeps.py --base d48ede5 --configs demo smollm2 --rounds 2 \\
        --out benchmarks/results/resident_sweeps.json

The old path is the code at `--base` (a git worktree of that commit, put first on PYTHONPATH for the
driver and, through the environment, its Ray workers); the new path is this checkout. Each run starts in a
fresh directory (new Ray, new MLflow database, the shared reference computed again) with the model caches
warm, the way a user's second sweep goes. Round k runs old-new for every config when k is odd and new-old
when even, so drift of a shared machine falls on both.

`--merge earlier.json` adds an earlier invocation's runs (same base) before the medians are taken, so rounds
can be added later; `--table FILE` renders the JSON as the Markdown table of docs/benchmarks.md's
`resident_sweeps` block and writes it there (`--from results.json` renders without running anything).

Per run: wall seconds; Ray's trial-seconds (`time_total_s` at each trial's last report, the same clock on
both paths: the worker's start is outside it); the optimizer-step seconds (`time_steps_s`) and their share of
Ray's trial-seconds; the new path's own trial clock (`time_trial_s`, which counts the worker's start and
imports) and its phases; the sweet-spot line; and every trial's reported metrics, compared between the paths
(figures that are clocks - *_s, *_runtime, *_per_second, gen_seconds - left out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLOCKS = re.compile(r"(_s|_runtime|_per_second|_seconds)$|^(timestamp|date|pid|node_id|node_ip|hostname|"
                    r"time_since_restore|iterations_since_restore|trial_id|done|checkpoint_dir_name|config|"
                    r"should_checkpoint|training_iteration|timesteps_total|episodes_total|experiment_tag)$")


def worktree(commit: str) -> Path:
    path = Path(tempfile.gettempdir()) / f"dpo-sweep-base-{commit[:12]}"
    if not (path / "orchestrator").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(path), commit], cwd=ROOT, check=True,
                       capture_output=True)
    return path


def trials_of(experiment: Path) -> dict[str, list[dict]]:
    """{config as text: the trial's reports in order}."""
    out = {}
    for result in sorted(experiment.glob("*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            out[json.dumps(rows[0]["config"], sort_keys=True)] = rows
    return out


def run_once(config: str, pythonpath: str | None) -> dict:
    exe = Path(sys.executable).with_name("dpo-sweep")
    env = {**os.environ}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = subprocess.run([str(exe), "run", config], check=False, cwd=tmp, capture_output=True, text=True,
                             env=env)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"{config} (PYTHONPATH {pythonpath or 'this checkout'}) failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        lines = out.stdout.splitlines()
        experiment = Path(next(ln for ln in lines if ln.startswith("Ray results:")).split(":", 1)[1].strip())
        trials = trials_of(experiment)
    last = [rows[-1] for rows in trials.values()]
    ray_seconds = sum(r["time_total_s"] for r in last)
    steps = sum(r.get("time_steps_s", 0.0) for r in last)
    own = sum(max(r.get("time_trial_s", 0.0), r["time_total_s"]) for r in last)
    phases = {}
    for r in last:
        for k, v in r.items():
            if k.startswith("time_") and k.endswith("_s") and k not in ("time_total_s", "time_this_iter_s", "time_trial_s"):
                phases[k[5:-2]] = phases.get(k[5:-2], 0.0) + v
    return {
        "wall_s": round(wall, 1), "ray_trial_seconds": round(ray_seconds, 1), "steps_seconds": round(steps, 1),
        "training_share_ray": round(steps / ray_seconds, 3) if ray_seconds else None,
        "own_trial_seconds": round(own, 1), "training_share_own": round(steps / own, 3) if own else None,
        "phases_s": {k: round(v, 1) for k, v in sorted(phases.items(), key=lambda kv: -kv[1])},
        # Loads: trials whose model_load took over a second (a resident model is handed over in ~0.1 s).
        "model_loads": sum(1 for rows in trials.values() if rows[-1].get("time_model_load_s", 0) > 1.0),
        "sweet_spot": next((ln for ln in lines if ln.startswith("Sweet spot")), ""),
        "cost_line": next((ln for ln in lines if ln.startswith("Cost:")), ""),
        "reports": {cfg: [{k: v for k, v in r.items() if not CLOCKS.search(k)} for r in rows]
                    for cfg, rows in trials.items()},
    }


def same_answers(a: dict, b: dict) -> dict:
    """Trials whose every reported figure (clocks aside) is equal on both paths, and the largest difference.

    Compared by step: a trial resumed on another worker can restart Ray's result.json, so rows need not line up,
    and a path that reports less often (fewer reports per epoch) shares only some steps with the other. A trial
    counts in `identical_at_shared_steps` when every figure of every step both paths reported is equal, and in
    `identical_trials` when, besides, both reported the same steps."""
    equal, shared_equal, differ, worst = 0, 0, [], 0.0
    for cfg in sorted(set(a["reports"]) | set(b["reports"])):
        ra = {r.get("step"): r for r in a["reports"].get(cfg, [])}
        rb = {r.get("step"): r for r in b["reports"].get(cfg, [])}
        diffs = []
        for step in sorted(set(ra) & set(rb), key=str):
            x, y = ra[step], rb[step]
            for k in set(x) | set(y):
                u, v = x.get(k, ""), y.get(k, "")  # '' and absent: a text figure not yet set (reward_hack_signal)
                if u == v or (isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v)):
                    continue
                diffs.append(k)
                if isinstance(u, (int, float)) and isinstance(v, (int, float)):
                    worst = max(worst, abs(u - v))
        shared = bool(set(ra) & set(rb)) and not diffs
        shared_equal += shared
        if set(ra) != set(rb):
            diffs.append("steps reported")
        if diffs:
            differ.append({"trial": cfg, "figures": sorted(set(diffs))[:8]})
        else:
            equal += 1
    return {"identical_trials": equal, "identical_at_shared_steps": shared_equal, "differing_trials": differ,
            "largest_difference": worst, "same_sweet_spot": a["sweet_spot"] == b["sweet_spot"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the commit of the old path")
    ap.add_argument("--head", default=None, help="the commit of the new path (default: this checkout as it is; a "
                    "commit runs from its own worktree, so the checkout may change while a long run goes on)")
    ap.add_argument("--configs", nargs="+", default=["demo", "smollm2"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", default=None, help="an earlier run's JSON whose runs are added before the medians")
    ap.add_argument("--from", dest="from_json", default=None, help="render --table from this JSON; run nothing")
    ap.add_argument("--table", default=None, help="a Markdown file whose resident_sweeps block is rewritten")
    args = ap.parse_args()
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        write_table(result, args.table)
        return
    old_tree = str(worktree(args.base))
    new_tree = str(worktree(args.head)) if args.head else None
    runs: dict[str, dict[str, list[dict]]] = {c: {"old": [], "new": []} for c in args.configs}
    answers: dict[str, list[dict]] = {c: [] for c in args.configs}
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())["summary"]
        for config, summary in earlier.items():
            runs.setdefault(config, {"old": [], "new": []})
            for variant in ("old", "new"):
                runs[config][variant] += summary["runs"][variant]
            answers.setdefault(config, []).extend(summary["answers"])
    for k in range(args.rounds):
        for config in args.configs:
            order = ("old", "new") if k % 2 == 0 else ("new", "old")
            for variant in order:
                r = run_once(config, old_tree if variant == "old" else new_tree)
                runs[config][variant].append(r)
                print(f"round {k + 1} {config} {variant}: {r['wall_s']} s wall, {r['ray_trial_seconds']} Ray "
                      f"trial-s, share {r['training_share_ray']} (own clock {r['training_share_own']}); "
                      f"{r['sweet_spot'][:90]}", file=sys.stderr, flush=True)
    summary = {}
    for config, by in runs.items():
        med = {v: {f: statistics.median(r[f] for r in rs) for f in
                   ("wall_s", "ray_trial_seconds", "steps_seconds", "training_share_ray", "own_trial_seconds",
                    "training_share_own")} for v, rs in by.items()}
        summary[config] = {
            "rounds": len(by["old"]),
            "median": med,
            "wall_ratio_new_over_old": round(med["new"]["wall_s"] / med["old"]["wall_s"], 3),
            "ray_trial_seconds_ratio": round(med["new"]["ray_trial_seconds"] / med["old"]["ray_trial_seconds"], 3),
            "answers": answers.get(config, []) + [same_answers(o, n) for o, n in zip(by["old"], by["new"])
                                                  if "reports" in o and "reports" in n],
            "runs": {v: [{k: x for k, x in r.items() if k != "reports"} for r in rs] for v, rs in by.items()},
        }
    result = {"benchmark": "resident_sweeps", "base": args.base, "head": args.head, "cpus": os.cpu_count(), "rounds": args.rounds,
              "date": time.strftime("%Y-%m-%d"), "summary": summary}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    if args.table:
        write_table(result, args.table)


def write_table(result: dict, path: str | None) -> None:
    lines = [(f"Measured by `benchmarks/resident_sweeps.py` on {result['date']}, {result['cpus']} CPUs, old path = commit "
             f"`{result['base']}`, new = {('commit `' + result['head'] + '`') if result.get('head') else 'this checkout'}; medians of interleaved rounds (old/new, then new/old)."), "",
             ("| sweep | path | rounds | wall s | Ray trial-s | step s | training share (Ray clock) |"
              " training share (own clock) |"), "|---|---|---|---|---|---|---|---|"]
    for config, summary in result["summary"].items():
        for variant in ("old", "new"):
            m = summary["median"][variant]
            lines.append(f"| {config} | {variant} | {summary.get('rounds', result['rounds'])} | {m['wall_s']:.0f} | "
                         f"{m['ray_trial_seconds']:.0f} | {m['steps_seconds']:.0f} | {m['training_share_ray']:.0%} | "
                         f"{m['training_share_own']:.0%} |")
    lines.append("")
    for config, summary in result["summary"].items():
        same = summary["answers"]
        identical = [a["identical_trials"] for a in same]
        shared = [a.get("identical_at_shared_steps", a["identical_trials"]) for a in same]
        spots = sum(a["same_sweet_spot"] for a in same)
        also = f" (at the steps both reported: {shared})" if shared != identical else ""
        lines.append(f"- {config}: new / old wall {summary['wall_ratio_new_over_old']:.2f}x, Ray trial-seconds "
                     f"{summary['ray_trial_seconds_ratio']:.2f}x; same sweet spot in {spots} of {len(same)} round(s); "
                     f"trials identical to the last digit per round: {identical}{also}.")
    if result.get("notes"):
        lines.append(f"- {result['notes']}")
    text = "\n".join(lines)
    print(text)
    if path:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from readme_block import replace_readme_block

        replace_readme_block(Path(path), "resident_sweeps", text)


if __name__ == "__main__":
    main()
