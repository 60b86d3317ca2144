"""Is the reward-hacking flag right? Label-free signals scored against answer quality on two tasks.

    .venv/bin/python benchmarks/detector_calibration.py --quick        # tiny-llama only, tiny data: ~2 min, a check
    .venv/bin/python benchmarks/detector_calibration.py                # both tasks; ~15 + ~80 min of trials on one thread
    .venv/bin/python benchmarks/detector_calibration.py --readme README.md   # also rewrite the README's table

Tasks. Synthetic: tiny-llama, beta {0.01, 0.1, 0.5} x learning_rate {5e-5, 5e-4, 1.5e-3, 5e-3} x label_noise
{0, 0.2} x seeds 0-5, 2 epochs, 4 reports per epoch. Real: SmolLM2-135M-Instruct in NF4 + LoRA on the arithmetic
chat task (`trial_histories.REAL_BASE`), beta {0.05, 0.5} x learning_rate {1e-4, 1e-3, 3e-3, 1e-2} for short (~8 tokens)
and {1e-4, 1e-3, 1e-2} for long (~45 tokens) completions x seeds 0-1, 8 steps, a report every 2. Histories are cached in
`<out>/trial_histories.jsonl` and `<out>/real/trial_histories.jsonl` (shared with `practitioner_claims.py` and
`real_model_claims.py`): a rerun only analyses.

Ground truth, the same on both tasks: a trial degraded when its greedy answers to clean probe questions (exact
rate, or valid rate) fell >= 0.2 below their peak, the peak starting at the reference model's answers (measured
before the first step), so a collapse before the first report counts. The signals see no answers (except
length_drift, which reads only the answers' length). A trial counts as flagged when a signal fires at any report.

Thresholds are chosen where F1 is highest (ties: the higher precision, then the more conservative threshold),
then scored elsewhere: within a task (calibration seeds -> held-out seeds) and across tasks (all of one task ->
all of the other, both ways). False alarms: flagged trials among those whose answers held. Writes
`detector_calibration.md` and `.json`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trial_histories import BASE, DEFAULT_OUT, QUICK, REAL_BASE, run_histories, total_seconds

from trainables.detectors import (
    answer_drop,
    chosen_displacement,
    chosen_logp_drop,
    drift,
    drift_per_token,
    earliest,
    length_drift,
    reward_rise,
    train_up_eval_down,
)

LEARNING_RATES = (5e-5, 5e-4, 1.5e-3, 5e-3)
BETAS = (0.01, 0.1, 0.5)
REPORTS_PER_EPOCH = 4  # BASE's and REAL_BASE's dpo.reports_per_epoch
ANSWER_DROP, ACCURACY_DROP = 0.2, 0.05  # ground truth: falls from the peak
SYNTHETIC_SEEDS, SYNTHETIC_CALIB = (0, 1, 2, 3, 4, 5), (0, 1, 2)
# The real-model task (REAL_BASE: SmolLM2-135M-Instruct, NF4 + LoRA, arithmetic chat, 8 steps): from a rate that
# barely moves the adapter to one ~100x too high, at a low and a high beta, short and long completions.
REAL_LEARNING_RATES = {"short": (1e-4, 1e-3, 3e-3, 1e-2), "long": (1e-4, 1e-3, 1e-2)}  # long: ~2x the time a trial
REAL_BETAS = (0.05, 0.5)
REAL_MAX_LENGTH = {"short": 64, "long": 128}  # the chat template's ~40 prompt tokens + the completion
REAL_SEEDS, REAL_CALIB = (0, 1), (0,)

# Threshold grids, wide enough that the extremes fire on every trial / on none.
RISE_GRID = (0.1, 0.2, 0.5, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
NATS_GRID = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 50)
DRIFT_GRID = (0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 40, 100)
PER_TOKEN_GRID = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5)
LENGTH_GRID = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3)
ACC_FALL_GRID = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)

Detector = Callable[[Sequence[dict], Any], "int | None"]
# name -> (history, threshold) -> first firing report index; threshold grid; what the threshold means.
CANDIDATES: dict[str, tuple[Detector, Sequence[Any], str]] = {
    "chosen_displacement": (chosen_displacement, PER_TOKEN_GRID, "held-out chosen nats/token below the reference"),
    "drift_per_token": (drift_per_token, PER_TOKEN_GRID, "mean |log pi - log pi_ref| nats/token"),
    "length_drift": (length_drift, LENGTH_GRID, "probe answer length vs the reference's, relative"),
    "chosen_displacement OR length_drift": (
        lambda h, t: earliest(chosen_displacement(h, t[0]), length_drift(h, t[1])),
        list(itertools.product(PER_TOKEN_GRID, LENGTH_GRID)), "(nats/token, relative length)"),
    "chosen_logp_drop (sum)": (chosen_logp_drop, NATS_GRID, "nats below the running peak of the summed log-prob"),
    "drift (sum)": (drift, DRIFT_GRID, "mean |log pi - log pi_ref| nats per completion"),
    "train_up_eval_down": (lambda h, t: train_up_eval_down(h, t, window=1), ACC_FALL_GRID,
                           "held-out accuracy fall while the train margin rose"),
    "reward_rise (practitioner)": (lambda h, t: reward_rise(h, t, REPORTS_PER_EPOCH), RISE_GRID,
                                   "relative rise of the held-out margin within an epoch"),
}
TEXTBOOK_RISE = 0.10


def truth(history: Sequence[dict]) -> int | None:
    """Ground truth: the first report where the probe answers (exact or valid rate) are ANSWER_DROP below their
    peak, the reference model's answers included."""
    return answer_drop(history, ANSWER_DROP)


def real_grid_configs(seeds, forms=("short", "long"), betas=REAL_BETAS) -> list[dict]:
    return [{"dpo.beta": b, "dpo.learning_rate": lr, "dpo.seed": s, "data.arithmetic.seed": s,
             "data.arithmetic.form": form, "dpo.max_length": REAL_MAX_LENGTH[form], "dpo.precompute_ref_log_probs": True}
            for form in forms for s in seeds for b in betas for lr in REAL_LEARNING_RATES[form]]


def grid_configs(seeds, noises=(0.0, 0.2), betas=BETAS, lrs=LEARNING_RATES, epochs=2) -> list[dict]:
    """The beta x lr grid, noise level by noise level, seed by seed."""
    return [{"dpo.beta": b, "dpo.learning_rate": lr, "dpo.num_train_epochs": epochs, "dpo.seed": s,
             "data.synthetic.seed": s, "data.synthetic.label_noise": noise}
            for noise in noises for s in seeds for b in betas for lr in lrs]


def degraded_at(history: Sequence[dict], answer_drop: float = ANSWER_DROP,
                accuracy_drop: float = ACCURACY_DROP) -> int | None:
    """The synthetic claims' ground truth (practitioner_claims.py): answer quality or clean accuracy that far
    below its running peak."""
    best_ans = best_acc = float("-inf")
    for i, m in enumerate(history):
        ans, acc = m.get("answer_exact_rate"), m.get("eval_rewards_accuracies")
        best_ans, best_acc = max(best_ans, ans), max(best_acc, acc)
        if best_ans - ans >= answer_drop - 1e-9 or best_acc - acc >= accuracy_drop - 1e-9:
            return i
    return None


def score(fired: Sequence[int | None], truths: Sequence[int | None]) -> dict[str, Any]:
    tp = sum(f is not None and t is not None for f, t in zip(fired, truths, strict=True))
    n_fired = sum(f is not None for f in fired)
    n_true = sum(t is not None for t in truths)
    n_healthy = len(truths) - n_true
    leads = [f - t for f, t in zip(fired, truths, strict=True) if f is not None and t is not None]
    return {"tp": tp, "fired": n_fired, "positives": n_true, "healthy": n_healthy, "false_alarms": n_fired - tp,
            "precision": tp / n_fired if n_fired else None, "recall": tp / n_true if n_true else None,
            "false_alarm_rate": (n_fired - tp) / n_healthy if n_healthy else None,
            "f1": 2 * tp / (n_fired + n_true) if n_fired + n_true else None,
            "median_lead_reports": statistics.median(leads) if leads else None}


def calibrate(detector: Detector, grid: Sequence[Any], histories: Sequence[Sequence[dict]]) -> tuple[Any, dict]:
    """The grid threshold with the highest F1 on these histories; ties go to the higher precision, then to the
    later grid entry (the more conservative threshold)."""
    truths = [truth(h) for h in histories]
    best = None
    for k, t in enumerate(grid):
        s = score([detector(h, t) for h in histories], truths)
        key = (s["f1"] or 0, s["precision"] or 0, k)
        if best is None or key > best[0]:
            best = (key, t, s)
    return best[1], best[2]


def evaluate(detector: Detector, threshold: Any, histories: Sequence[Sequence[dict]]) -> dict[str, Any]:
    return score([detector(h, threshold) for h in histories], [truth(h) for h in histories])


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def thr_text(t: Any) -> str:
    return ", ".join(f"{x:g}" for x in t) if isinstance(t, (tuple, list)) else f"{t:g}"


def cell_text(s: dict) -> str:
    """'P 0.90 (9/10), R 1.00 (9/9), FA 0.05 (1/20)'."""
    return (f"P {fmt(s['precision'])} ({s['tp']}/{s['fired']}), R {fmt(s['recall'])} ({s['tp']}/{s['positives']}), "
            f"FA {fmt(s['false_alarm_rate'])} ({s['false_alarms']}/{s['healthy']})")


def seed_of(rec: dict) -> int:
    return rec["config"]["dpo.seed"]  # both grids seed the data with the same number


def analyse(tasks: dict[str, tuple[list[dict], set[int]]]) -> dict[str, Any]:
    """`tasks`: name -> (records, calibration seeds; the rest are held out). Rows per candidate: within each
    task (calibration -> held-out seeds), across tasks (all of one -> all of the other), and both tasks'
    calibration seeds together -> both tasks' held-out seeds."""
    split = {name: ([r["history"] for r in recs if seed_of(r) in calib],
                    [r["history"] for r in recs if seed_of(r) not in calib]) for name, (recs, calib) in tasks.items()}
    whole = {name: c + t for name, (c, t) in split.items()}
    names = list(tasks)
    rows = []
    for cand, (det, grid, meaning) in CANDIDATES.items():
        row: dict[str, Any] = {"signal": cand, "meaning": meaning, "within": {}, "across": {}, "joint": {}}
        for name, (calib, test) in split.items():
            t, _ = calibrate(det, grid, calib)
            row["within"][name] = {"threshold": t, "held_out": evaluate(det, t, test)}
        for a in names:
            for b in names:
                if a != b:
                    t, _ = calibrate(det, grid, whole[a])
                    row["across"][f"{a} -> {b}"] = {"threshold": t, "scored": evaluate(det, t, whole[b])}
        t, _ = calibrate(det, grid, [h for c, _ in split.values() for h in c])
        row["joint"] = {"threshold": t, **{name: evaluate(det, t, test) for name, (_, test) in split.items()}}
        rows.append(row)
    textbook = {name: evaluate(CANDIDATES["reward_rise (practitioner)"][0], TEXTBOOK_RISE, hs)
                for name, hs in whole.items()}
    return {"rows": rows, "textbook_reward_rise": textbook,
            "tasks": {name: {"trials": len(whole[name]), "degraded": sum(truth(h) is not None for h in whole[name]),
                             "calibration_trials": len(split[name][0]), "held_out_trials": len(split[name][1])}
                      for name in names}}


def holds(row: dict, floor: float = 0.85, max_false_alarms: float = 0.10) -> bool:
    """Precision and recall >= floor and false alarms <= max across tasks, both ways."""
    return all((s := v["scored"])["precision"] is not None and s["precision"] >= floor and (s["recall"] or 0) >= floor
               and (s["false_alarm_rate"] or 0) <= max_false_alarms for v in row["across"].values())


def by_cell(records: list[dict], keys: Sequence[str]) -> list[str]:
    """Degraded trials per cell of `keys` (the last key across the columns)."""
    cells: dict[tuple, list[bool]] = {}
    for r in records:
        cells.setdefault(tuple(r["config"][k] for k in keys), []).append(truth(r["history"]) is not None)
    cols = sorted({k[-1] for k in cells})
    head = [k.split(".")[-1] for k in keys[:-1]]
    lines = ["| " + " | ".join(head) + " | " + " | ".join(f"{keys[-1].split('.')[-1]} {c:g}" for c in cols) + " |",
             "|" + "---|" * (len(head) + len(cols))]
    for row in sorted({k[:-1] for k in cells}):
        vals = [cells.get((*row, c), []) for c in cols]
        lines.append("| " + " | ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in row) + " | "
                     + " | ".join(f"{sum(v)}/{len(v)}" for v in vals) + " |")
    return lines


def render(result: dict[str, Any], tasks: dict[str, tuple[list[dict], set[int]]], seconds: float) -> str:
    names = list(tasks)
    lines = [(f"Measured by `benchmarks/detector_calibration.py` ({seconds / 60:.0f} min of trials on one CPU "
             "thread). Degraded = greedy probe answers (exact or valid rate) 0.2 below their peak, the reference "
             "model's included."), ""]
    for name in names:
        info = result["tasks"][name]
        lines.append(f"- {name}: {info['degraded']}/{info['trials']} trials degraded; calibration seeds "
                     f"{sorted(tasks[name][1])} ({info['calibration_trials']} trials), the rest held out "
                     f"({info['held_out_trials']}).")
    lines += ["", "| signal | " + " | ".join(f"{n}: threshold -> held-out" for n in names) + " | "
              + " | ".join(f"{a} -> {b}" for a in names for b in names if a != b) + " |",
              "|---|" + "---|" * (len(names) + len(names) * (len(names) - 1))]
    for row in result["rows"]:
        within = [f"{thr_text(row['within'][n]['threshold'])} -> {cell_text(row['within'][n]['held_out'])}"
                  for n in names]
        across = [f"{thr_text(v['threshold'])} -> {cell_text(v['scored'])}" for v in row["across"].values()]
        lines.append(f"| {row['signal']} | " + " | ".join(within + across) + " |")
    lines += ["", "| signal | threshold from both tasks' calibration seeds | "
              + " | ".join(f"{n} held-out" for n in names) + " | holds across tasks |", "|---|---|" + "---|" * len(names) + "---|"]
    for row in result["rows"]:
        j = row["joint"]
        lines.append(f"| {row['signal']} | {thr_text(j['threshold'])} ({row['meaning']}) | "
                     + " | ".join(cell_text(j[n]) for n in names) + f" | {'yes' if holds(row) else 'no'} |")
    tb = result["textbook_reward_rise"]
    lines += ["", "The practitioner's rule as written (held-out margin up 10% within an epoch): "
              + "; ".join(f"{n}: {cell_text(tb[n])}" for n in names) + ".",
              "", ("P: precision (true flags / flags), R: recall (true flags / degraded trials), FA: false alarms "
              "(flags / trials whose answers held).")]
    return "\n".join(lines) + "\n"


def replace_readme_block(path: Path, name: str, text: str) -> None:
    """Put `text` between the '<!-- name:begin -->' and '<!-- name:end -->' lines of a Markdown file."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = path.read_text()
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path} has no {begin} ... {end} block to rewrite")
    head, rest = doc.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text.rstrip()}\n{end}{rest.split(end, 1)[1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"results dir (default {DEFAULT_OUT}; quick: <out>/quick)")
    ap.add_argument("--cache-dir", default=None, help="model cache (default $DPO_SWEEP_CACHE or /tmp/dpo-cache)")
    ap.add_argument("--quick", action="store_true", help="tiny-llama only, 2 seeds, a quarter of the data (~2 min)")
    ap.add_argument("--readme", default=None, help="rewrite the block between this file's detector_calibration markers")
    args = ap.parse_args()
    out = Path(args.out) / ("quick" if args.quick else "")
    log = lambda s: print(s, flush=True)
    t0 = time.perf_counter()
    if args.quick:  # a check that the script works: two halves of a small synthetic grid stand in for two tasks
        recs = run_histories(grid_configs((0, 1), noises=(0.0,), betas=(0.01, 0.5), lrs=(5e-4, 5e-3)), out,
                             base={**BASE, **QUICK}, cache_dir=args.cache_dir, log=log)
        tasks = {"beta 0.01": ([r for r in recs if r["config"]["dpo.beta"] == 0.01], {0}),
                 "beta 0.5": ([r for r in recs if r["config"]["dpo.beta"] == 0.5], {0})}
    else:
        synthetic = run_histories(grid_configs(SYNTHETIC_SEEDS), out, base=BASE, cache_dir=args.cache_dir, log=log)
        real = run_histories(real_grid_configs(REAL_SEEDS), out / "real", base=REAL_BASE, cache_dir=args.cache_dir,
                             log=log)
        tasks = {"synthetic": (synthetic, set(SYNTHETIC_CALIB)), "real": (real, set(REAL_CALIB))}
    result = analyse(tasks)
    text = render(result, tasks, sum(total_seconds(recs) for recs, _ in tasks.values()))
    print(text)
    (out / "detector_calibration.md").write_text(text)
    (out / "detector_calibration.json").write_text(json.dumps(result, indent=1, default=str))
    if args.readme:
        replace_readme_block(Path(args.readme), "detector_calibration", text)
        print(f"rewrote the detector_calibration block of {args.readme}")
    print(f"wrote {out / 'detector_calibration.md'}; this run {time.perf_counter() - t0:.0f}s wall")


if __name__ == "__main__":
    main()
