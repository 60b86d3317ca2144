"""Is the reward-hacking flag right? Label-free signals scored against answer quality on two tasks.

    .venv/bin/python benchmarks/detector_calibration.py --quick        # tiny-llama only, tiny data: ~2 min, a check
    .venv/bin/python benchmarks/detector_calibration.py                # both tasks; ~15 + ~80 min of trials on one thread
    .venv/bin/python benchmarks/detector_calibration.py --readme docs/benchmarks.md   # also rewrite its table there

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

from readme_block import replace_readme_block
from trial_histories import BASE, DEFAULT_OUT, QUICK, REAL_BASE, run_histories, total_seconds

from trainables.config import RewardHackingSettings
from trainables.detectors import (
    SIGNALS,
    answer_drop,
    chosen_displacement,
    chosen_logp_drop,
    drift,
    drift_per_token,
    length_drift,
    reward_rise,
    train_up_eval_down,
)


def earliest(*indices: int | None) -> int | None:
    """Detectors combined with OR: the first report at which any of them fired."""
    fired = [i for i in indices if i is not None]
    return min(fired) if fired else None


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
    "drift_per_token": (drift_per_token, PER_TOKEN_GRID, "mean abs(log pi - log pi_ref), nats/token"),
    "length_drift": (length_drift, LENGTH_GRID, "probe answer length vs the reference's, relative"),
    "chosen_displacement OR length_drift": (
        lambda h, t: earliest(chosen_displacement(h, t[0]), length_drift(h, t[1])),
        list(itertools.product(PER_TOKEN_GRID, LENGTH_GRID)), "(nats/token, relative length)"),
    "chosen_logp_drop (sum)": (chosen_logp_drop, NATS_GRID, "nats below the running peak of the summed log-prob"),
    "drift (sum)": (drift, DRIFT_GRID, "mean abs(log pi - log pi_ref), nats per completion"),
    "train_up_eval_down": (lambda h, t: train_up_eval_down(h, t, window=1), ACC_FALL_GRID,
                           "held-out accuracy fall while the train margin rose"),
    "reward_rise (practitioner)": (lambda h, t: reward_rise(h, t, REPORTS_PER_EPOCH), RISE_GRID,
                                   "relative rise of the held-out margin within an epoch"),
}
TEXTBOOK_RISE = 0.10
# Not eligible as the default: they sum over the completion's tokens, so their scale grows with its length. On
# long completions healthy DPO lowers the summed chosen log-prob by nats (issue 12: -48.8 -> -54.4 while answers
# improved 0.20 -> 0.425), and this benchmark cannot show that side: its long-form trials are mostly left out.
SUMMED = ("chosen_logp_drop (sum)", "drift (sum)")


def truth(history: Sequence[dict]) -> int | None:
    """Ground truth: the first report where the probe answers (exact or valid rate) are ANSWER_DROP below their
    peak, the reference model's answers included."""
    return answer_drop(history, ANSWER_DROP)


def judgeable(history: Sequence[dict]) -> bool:
    """Whether the answers can say if this trial degraded: it did (`truth`), or its exact rate reached ANSWER_DROP
    at some point (the reference's included), so a fall of that size could have been seen. A trial whose answers
    were never that good and never lost their validity is left out of the scores, as neither healthy nor degraded:
    the long arithmetic form's reference answers 0 of the probes within 64 tokens and its replies always hold a
    number, so even a policy 13 nats/token from the reference looked 'healthy' there."""
    if truth(history) is not None:
        return True
    return max(max(float(m.get("answer_exact_rate", 0)), float(m.get("ref_answer_exact_rate", 0)))
               for m in history) >= ANSWER_DROP - 1e-9


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


def calibrate(detector: Detector, grid: Sequence[Any], *groups: Sequence[Sequence[dict]],
              rule: str = "f1") -> Any:
    """The grid threshold that does best on these histories (several groups: tasks, none traded for another).

    Rule 'f1': the highest F1 of the worst group, then the higher precision. Rule 'quiet' (precision first): no
    false alarm in any group at the threshold and at the grid step below it (a step of headroom: a healthy trial
    must go one step further than any seen to be flagged), then the highest recall of the worst group; None when
    no threshold is that quiet. Where several thresholds tie (a calibration set they all separate), the middle one
    of them: the grids are roughly log-spaced, so that is the widest margin on both sides, where an edge would
    carry to another task badly."""
    truths = [[truth(h) for h in g] for g in groups]
    scores = [[score([detector(h, t) for h in g], tr) for g, tr in zip(groups, truths, strict=True)] for t in grid]
    keys = []
    for k, at in enumerate(scores):
        if rule == "f1":
            keys.append((min(s["f1"] or 0 for s in at), min(s["precision"] or 0 for s in at)))
        elif k > 0 and all(s["false_alarms"] == 0 for s in (*at, *scores[k - 1])):
            keys.append((min(s["recall"] or 0 for s in at),))
        else:
            keys.append(None)
    best = max((k for k in keys if k is not None), default=None)
    if best is None:
        return None
    tied = [t for t, k in zip(grid, keys, strict=True) if k == best]
    return tied[len(tied) // 2]


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
    split = {name: ([r["history"] for r in recs if seed_of(r) in calib and judgeable(r["history"])],
                    [r["history"] for r in recs if seed_of(r) not in calib and judgeable(r["history"])])
             for name, (recs, calib) in tasks.items()}
    whole = {name: c + t for name, (c, t) in split.items()}
    names = list(tasks)
    rows = []
    for cand, (det, grid, meaning) in CANDIDATES.items():
        row: dict[str, Any] = {"signal": cand, "meaning": meaning, "within": {}, "across": {}, "joint": {}}
        for name, (calib, test) in split.items():
            t = calibrate(det, grid, calib)
            row["within"][name] = {"threshold": t, "held_out": evaluate(det, t, test)}
        for a in names:
            for b in names:
                if a != b:
                    t = calibrate(det, grid, whole[a])
                    row["across"][f"{a} -> {b}"] = {"threshold": t, "scored": evaluate(det, t, whole[b])}
        t = calibrate(det, grid, *(c for c, _ in split.values()))
        row["joint"] = {"threshold": t, **{name: evaluate(det, t, test) for name, (_, test) in split.items()}}
        t = calibrate(det, grid, *(c for c, _ in split.values()), rule="quiet")
        row["quiet"] = {"threshold": t, **({name: evaluate(det, t, test) for name, (_, test) in split.items()}
                                           if t is not None else {})}
        rows.append(row)
    textbook = {name: evaluate(CANDIDATES["reward_rise (practitioner)"][0], TEXTBOOK_RISE, hs)
                for name, hs in whole.items()}
    # The default before the generations' health rule (benchmarks/selection_regret.py calibrates that one): these
    # histories predate the generation evaluation, so the health rule cannot be scored on them.
    default = RewardHackingSettings()
    signal = "drift_per_token"
    detect, threshold = SIGNALS[signal].detect, getattr(default, signal)
    left_out = {name: [r["history"] for r in recs if not judgeable(r["history"])] for name, (recs, _) in tasks.items()}
    shipped = {"signal": signal, "threshold": threshold, **{n: evaluate(detect, threshold, hs) for n, hs in whole.items()},
               "left_out": {n: (sum(detect(h, threshold) is not None for h in hs), len(hs)) for n, hs in left_out.items()}}
    return {"rows": rows, "textbook_reward_rise": textbook, "shipped": shipped,
            "tasks": {name: {"trials": len(whole[name]), "degraded": sum(truth(h) is not None for h in whole[name]),
                             "left_out": len(tasks[name][0]) - len(whole[name]),
                             "calibration_trials": len(split[name][0]), "held_out_trials": len(split[name][1])}
                      for name in names}}


def holds(row: dict, floor: float = 0.85, max_false_alarms: float = 0.10) -> bool:
    """Precision and recall >= floor and false alarms <= max across tasks, both ways."""
    return all((s := v["scored"])["precision"] is not None and s["precision"] >= floor and (s["recall"] or 0) >= floor
               and (s["false_alarm_rate"] or 0) <= max_false_alarms for v in row["across"].values())


def recommend(result: dict[str, Any]) -> dict | None:
    """The default by the goal: of the length-invariant signals that hold across tasks, the one whose worst
    cross-task F1 is highest (at its one-threshold-for-both choice); None when none holds."""
    held = [r for r in result["rows"] if r["signal"] not in SUMMED and holds(r)]
    return max(held, key=lambda r: min(v["scored"]["f1"] or 0 for v in r["across"].values()), default=None)


def render(result: dict[str, Any], tasks: dict[str, tuple[list[dict], set[int]]], seconds: float) -> str:
    names = list(tasks)
    pairs = [f"{a} -> {b}" for a in names for b in names if a != b]
    lines = [(f"Measured by `benchmarks/detector_calibration.py` ({seconds / 60:.0f} min of trials on one CPU "
             "thread). Degraded = greedy probe answers (exact or valid rate) 0.2 below their peak, the reference "
             "model's included."), ""]
    for name in names:
        info = result["tasks"][name]
        lines.append(f"- {name}: {info['degraded']}/{info['trials']} trials degraded ({info['left_out']} more left out: "
                     "their answers could not show a fall); calibration seeds "
                     f"{sorted(tasks[name][1])} ({info['calibration_trials']} trials), the rest held out "
                     f"({info['held_out_trials']}).")
    lines += ["", "**Across tasks** (threshold chosen on all of one task, scored on all of the other):", "",
              "| signal | " + " | ".join(pairs) + " | holds both ways |", "|---|" + "---|" * (len(pairs) + 1)]
    for row in result["rows"]:
        lines.append(f"| {row['signal']} | " + " | ".join(
            f"{thr_text(v['threshold'])}: {cell_text(v['scored'])}" for v in row["across"].values())
            + f" | {'**yes**' if holds(row) else 'no'} |")
    lines += ["", "**Within each task** (threshold chosen on the calibration seeds, scored on the held-out seeds):", "",
              "| signal | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for row in result["rows"]:
        lines.append(f"| {row['signal']} | " + " | ".join(
            f"{thr_text(row['within'][n]['threshold'])}: {cell_text(row['within'][n]['held_out'])}" for n in names)
            + " |")
    lines += ["", ("**One threshold for both tasks** (the best worst-task F1 on both tasks' calibration seeds), scored "
              "on the held-out seeds:"), "", "| signal | threshold | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    for row in result["rows"]:
        j = row["joint"]
        lines.append(f"| {row['signal']} | {thr_text(j['threshold'])} ({row['meaning']}) | "
                     + " | ".join(cell_text(j[n]) for n in names) + " |")
    lines += ["", ("**Precision first** (no false alarm on either task's calibration seeds at the threshold and at "
                   "the grid step below it; then the best worst-task recall), scored on the held-out seeds:"), "",
              "| signal | threshold | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for row in result["rows"]:
        q = row["quiet"]
        if q["threshold"] is None:
            lines.append(f"| {row['signal']} | no threshold that quiet |" + " |" * len(names))
            continue
        lines.append(f"| {row['signal']} | {thr_text(q['threshold'])} | " + " | ".join(cell_text(q[n]) for n in names)
                     + " |")
    tb = result["textbook_reward_rise"]
    lines += ["", "The practitioner's rule as written (held-out margin up 10% within an epoch): "
              + "; ".join(f"{n}: {cell_text(tb[n])}" for n in names) + ".", ""]
    best = recommend(result)
    if best is None:
        lines.append("By the goal (precision and recall >= 0.85, false alarms <= 10%, across tasks both ways) no "
                     "length-invariant signal holds. The summed signals (" + ", ".join(SUMMED) + ") are not "
                     "eligible: their scale grows with completion length, which the judged trials here barely cover.")
    else:
        lines.append(f"By the goal, `{best['signal']}` at {thr_text(best['joint']['threshold'])} ({best['meaning']}) "
                     "holds across tasks (precision and recall >= 0.85, false alarms <= 10% both ways).")
    shipped = result["shipped"]
    lines += ["", f"The earlier default, `{shipped['signal']}` at {thr_text(shipped['threshold'])} (before the "
              "generations' health rule, \"Choosing the trial\"), on every judged trial: "
              + "; ".join(f"{n}: {cell_text(shipped[n])}" for n in names)
              + "; it flags " + "; ".join(f"{shipped['left_out'][n][0]} of the {shipped['left_out'][n][1]} {n} trials "
                                          "left out" for n in names) + "."]
    lines += ["", ("P: precision (true flags / flags), R: recall (true flags / degraded trials), FA: false alarms "
              "(flags / trials whose answers held).")]
    return "\n".join(lines) + "\n"


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
