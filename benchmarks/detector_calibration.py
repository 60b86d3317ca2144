"""Is the reward-hacking flag right? Label-free detectors scored against the synthetic task's ground truth.

    .venv/bin/python benchmarks/detector_calibration.py --quick        # 2 seeds, tiny data: ~2 min, a check
    .venv/bin/python benchmarks/detector_calibration.py                # 144 trials, ~22 min on one thread
    .venv/bin/python benchmarks/detector_calibration.py --calib-seeds 0 1 2 --test-seeds 3 4 5 --noises 0 0.2

Trials: beta {0.01, 0.1, 0.5} x learning_rate {5e-5, 5e-4, 1.5e-3, 5e-3} x label_noise {0, 0.2} x seeds, 2
epochs, 4 reports per epoch (the seed sets both `dpo.seed` and `data.synthetic.seed`). Histories are cached in
`<out>/trial_histories.jsonl` (shared with `practitioner_claims.py`): a rerun only analyses.

Ground truth (the answers are known): a trial degraded at the first report where its greedy exact-answer rate on
clean probes is >= 0.2 below its running peak, or its clean held-out pair accuracy is >= 0.05 below its running
peak. Detectors (`trainables.detectors`) see no clean labels, except (d), which reads held-out pair accuracy
(clean here, as noisy as the annotation in real use). Each detector's threshold is chosen on the calibration seeds
(max F1; and, second rule, the best recall with precision >= 0.85), then scored on the held-out seeds, where a
trial counts as flagged when the detector fires at any report. Writes `detector_calibration.md` and `.json`.
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

from trial_histories import BASE, DEFAULT_OUT, QUICK, run_histories, total_seconds

from trainables.detectors import (
    chosen_logp_drop,
    drift,
    earliest,
    reward_rise,
    train_up_eval_down,
)

LEARNING_RATES = (5e-5, 5e-4, 1.5e-3, 5e-3)
BETAS = (0.01, 0.1, 0.5)
REPORTS_PER_EPOCH = 4  # BASE's dpo.reports_per_epoch
ANSWER_DROP, ACCURACY_DROP = 0.2, 0.05  # ground truth: falls from the running peak
PRECISION_FLOOR = 0.85
TEXTBOOK_RISE = 0.10

# Threshold grids, wide enough that the extremes fire on every trial / on none.
RISE_GRID = (0.1, 0.2, 0.5, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
NATS_GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 5, 10, 20)
DRIFT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.25, 1.4, 1.6, 2, 3, 5, 10, 20, 40)
ACC_FALL_GRID = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2)

Detector = Callable[[Sequence[dict], Any], "int | None"]
# name -> (history, threshold) -> first firing report index; threshold grid; what the threshold means.
CANDIDATES: dict[str, tuple[Detector, Sequence[Any], str]] = {
    "a reward rise (practitioner)": (lambda h, t: reward_rise(h, t, REPORTS_PER_EPOCH), RISE_GRID,
                                     "relative rise of eval_rewards_margins in one epoch"),
    "b eval chosen logp drop": (chosen_logp_drop, NATS_GRID, "nats below running max of eval_logps_chosen"),
    "c drift |log pi/pi_ref|": (drift, DRIFT_GRID, "eval_abs_logratio > t nats"),
    "d train margin up, eval acc down (1 report)": (lambda h, t: train_up_eval_down(h, t, window=1), ACC_FALL_GRID,
                                                    "held-out acc fall > t, train margin up, vs last report"),
    "d' same over one epoch": (lambda h, t: train_up_eval_down(h, t, window=REPORTS_PER_EPOCH), ACC_FALL_GRID,
                               "as d, vs the report one epoch earlier"),
    "e train chosen logp drop": (lambda h, t: chosen_logp_drop(h, t, metric="train_logps_chosen"), NATS_GRID,
                                 "nats below running max of train_logps_chosen"),
    "b OR c": (lambda h, t: earliest(chosen_logp_drop(h, t[0]), drift(h, t[1])),
               list(itertools.product(NATS_GRID, DRIFT_GRID)), "(b nats, c nats)"),
}


def grid_configs(seeds, noises=(0.0, 0.2), betas=BETAS, lrs=LEARNING_RATES, epochs=2) -> list[dict]:
    """The beta x lr grid, noise level by noise level, seed by seed."""
    return [{"dpo.beta": b, "dpo.learning_rate": lr, "dpo.num_train_epochs": epochs, "dpo.seed": s,
             "data.synthetic.seed": s, "data.synthetic.label_noise": noise}
            for noise in noises for s in seeds for b in betas for lr in lrs]


def degraded_at(history: Sequence[dict], answer_drop: float = ANSWER_DROP,
                accuracy_drop: float = ACCURACY_DROP) -> int | None:
    """Ground truth: the first report where answer quality or clean accuracy fell that far below its running peak."""
    best_ans = best_acc = float("-inf")
    for i, m in enumerate(history):
        ans, acc = m.get("answer_exact_rate"), m.get("eval_rewards_accuracies")
        best_ans, best_acc = max(best_ans, ans), max(best_acc, acc)
        # 1e-9: 0.05 of 128 pairs and 0.2 of 64 probes are not whole counts; keep '>=' exact in floats.
        if best_ans - ans >= answer_drop - 1e-9 or best_acc - acc >= accuracy_drop - 1e-9:
            return i
    return None


def score(fired: Sequence[int | None], truth: Sequence[int | None]) -> dict[str, Any]:
    tp = sum(f is not None and t is not None for f, t in zip(fired, truth, strict=True))
    n_fired = sum(f is not None for f in fired)
    n_true = sum(t is not None for t in truth)
    p = tp / n_fired if n_fired else None
    r = tp / n_true if n_true else None
    f1 = 2 * tp / (n_fired + n_true) if n_fired + n_true else None
    leads = [f - t for f, t in zip(fired, truth, strict=True) if f is not None and t is not None]
    return {"tp": tp, "fired": n_fired, "positives": n_true, "precision": p, "recall": r, "f1": f1,
            "median_lead_reports": statistics.median(leads) if leads else None}


def calibrate(detector: Detector, grid: Sequence[Any], histories, truth, rule: str) -> tuple[Any, dict] | None:
    """The grid threshold that maximises F1 (rule 'f1'), or recall subject to precision >= 0.85 (rule 'p85').
    Ties go to the higher precision, then to the later grid entry (the more conservative threshold)."""
    best = None
    for k, t in enumerate(grid):
        s = score([detector(h, t) for h in histories], truth)
        if rule == "f1":
            key = (s["f1"] or 0, s["precision"] or 0, k)
        elif s["precision"] is not None and s["precision"] >= PRECISION_FLOOR:
            key = (s["recall"] or 0, s["precision"], k)
        else:
            continue
        if best is None or key > best[0]:
            best = (key, t, s)
    return (best[1], best[2]) if best else None


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def frac(s: dict, what: str) -> str:
    num, den = s["tp"], s["fired"] if what == "precision" else s["positives"]
    return f"{fmt(s[what])} ({num}/{den})"


# Ground truths: the brief's (answer quality OR clean accuracy), and answer-quality collapse alone (the failure
# that pair accuracy hides; clean accuracy wobbles by 0.05 = 7 of 128 pairs in healthy runs too).
TRUTHS: dict[str, Callable[[Sequence[dict]], int | None]] = {
    f"answers >= {ANSWER_DROP} below peak OR clean accuracy >= {ACCURACY_DROP} below peak": degraded_at,
    f"answers >= {ANSWER_DROP} below peak (answer collapse only)": lambda h: degraded_at(h, accuracy_drop=2.0),
}


def analyse(records: list[dict], calib_seeds: set[int], test_seeds: set[int],
            truth_fn: Callable[[Sequence[dict]], int | None] = degraded_at) -> dict[str, Any]:
    def seed(r):
        return r["config"]["data.synthetic.seed"]

    calib = [r["history"] for r in records if seed(r) in calib_seeds]
    test = [r["history"] for r in records if seed(r) in test_seeds]
    truth_c, truth_t = [truth_fn(h) for h in calib], [truth_fn(h) for h in test]
    rows = []
    for name, (det, grid, meaning) in CANDIDATES.items():
        for rule in ("f1", "p85"):
            chosen = calibrate(det, grid, calib, truth_c, rule)
            if chosen is None:
                rows.append({"detector": name, "rule": rule, "threshold": None, "meaning": meaning})
                continue
            t, s_c = chosen
            s_t = score([det(h, t) for h in test], truth_t)
            rows.append({"detector": name, "rule": rule, "threshold": t, "meaning": meaning, "calib": s_c,
                         "test": s_t})
    # The practitioner's rule as written: 10% within one epoch.
    rise = CANDIDATES["a reward rise (practitioner)"][0]
    s_c = score([rise(h, TEXTBOOK_RISE) for h in calib], truth_c)
    s_t = score([rise(h, TEXTBOOK_RISE) for h in test], truth_t)
    rows.append({"detector": "a reward rise (practitioner)", "rule": "textbook", "threshold": TEXTBOOK_RISE,
                 "meaning": CANDIDATES["a reward rise (practitioner)"][2], "calib": s_c, "test": s_t})
    all_h = calib + test
    fired_epoch1 = sum(1 for h in all_h if (i := rise(h, TEXTBOOK_RISE)) is not None and i < REPORTS_PER_EPOCH)
    return {"rows": rows, "n_calib": len(calib), "n_test": len(test),
            "degraded_calib": sum(t is not None for t in truth_c), "degraded_test": sum(t is not None for t in truth_t),
            "textbook_fired_in_epoch1": fired_epoch1,
            "textbook_fired": sum(rise(h, TEXTBOOK_RISE) is not None for h in all_h)}


def by_cell(records: list[dict]) -> list[str]:
    """Degraded trials per (noise, beta, lr), as 'any / answers': where the positives are."""
    cells: dict[tuple, list[tuple[bool, bool]]] = {}
    for r in records:
        c = r["config"]
        key = (c["data.synthetic.label_noise"], c["dpo.beta"], c["dpo.learning_rate"])
        h = r["history"]
        cells.setdefault(key, []).append((degraded_at(h) is not None, degraded_at(h, accuracy_drop=2.0) is not None))
    lrs = sorted({k[2] for k in cells})
    lines = ["| noise | beta | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
             "|---|---|" + "---|" * len(lrs)]
    for noise, beta in sorted({k[:2] for k in cells}):
        vals = [cells.get((noise, beta, lr), []) for lr in lrs]
        lines.append(f"| {noise:g} | {beta:g} | "
                     + " | ".join(f"{sum(a for a, _ in v)} / {sum(b for _, b in v)} of {len(v)}" for v in vals) + " |")
    return lines


def render_table(title: str, result: dict[str, Any], args) -> list[str]:
    lines = [
        f"## Ground truth: {title}",
        "",
        (f"Degraded: {result['degraded_calib']}/{result['n_calib']} calibration trials (seeds {args.calib_seeds}), "
         f"{result['degraded_test']}/{result['n_test']} held-out (seeds {args.test_seeds})."),
        "",
        "| detector | rule | threshold | calib P | calib R | calib F1 | held-out P | held-out R | held-out F1 | lead |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if row["threshold"] is None:
            lines.append(f"| {row['detector']} | {row['rule']} | none reaches P >= {PRECISION_FLOOR} "
                         "| | | | | | | |")
            continue
        c, t = row["calib"], row["test"]
        thr = row["threshold"]
        thr = ", ".join(f"{x:g}" for x in thr) if isinstance(thr, (tuple, list)) else f"{thr:g}"
        lines.append(f"| {row['detector']} | {row['rule']} | {thr} | {frac(c, 'precision')} | {frac(c, 'recall')} | "
                     f"{fmt(c['f1'])} | {frac(t, 'precision')} | {frac(t, 'recall')} | {fmt(t['f1'])} | "
                     f"{fmt(t['median_lead_reports'], 1)} |")
    best = max((r for r in result["rows"] if r["threshold"] is not None and r["rule"] != "textbook"),
               key=lambda r: (r["test"]["f1"] or 0, r["calib"]["f1"] or 0))
    lines += ["", (f"Best on held-out seeds (F1): {best['detector']} ({best['rule']}, threshold {best['threshold']}: "
                   f"{best['meaning']}): precision {frac(best['test'], 'precision')}, "
                   f"recall {frac(best['test'], 'recall')}."), ""]
    return lines


def early_collapse(records: list[dict]) -> int:
    return sum(r["history"][0]["answer_exact_rate"] < ANSWER_DROP for r in records if r["history"])


def render(results: dict[str, dict[str, Any]], records: list[dict], args, seconds: float) -> str:
    first = next(iter(results.values()))
    n_all = first["n_calib"] + first["n_test"]
    lines = [
        "# Reward-hacking detectors vs ground truth (synthetic task, tiny-llama, CPU)",
        "",
        f"{len(records)} trials; compute {seconds / 60:.1f} min of trials (one thread, one at a time).",
        "",
        "Degraded trials per cell, 'any criterion / answer collapse of n seeds':",
        "",
        *by_cell(records),
        "",
        (f"The practitioner's rule at its textbook 10% fired in {first['textbook_fired']}/{n_all} trials, "
         f"{first['textbook_fired_in_epoch1']}/{n_all} already in epoch 1."),
        "",
        (f"Blind spot of the running-peak ground truth: {early_collapse(records)}/{len(records)} trials answered "
         f"< {ANSWER_DROP} of the probes already at their first report (collapsed before it; peak never high), so "
         "they count as not degraded, and a detector that flags them counts a false positive."),
        "",
        ("Precision and recall are per trial (flagged at any report); lead = median (fire report - degradation "
         "report) over held-out true positives, negative = early warning. Rule f1: threshold maximising calibration "
         f"F1; p85: best calibration recall with precision >= {PRECISION_FLOOR}; textbook: the practitioner's 10%."),
        "",
    ]
    for title, result in results.items():
        lines += render_table(title, result, args)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--calib-seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0)")
    ap.add_argument("--test-seeds", type=int, nargs="+", default=None, help="default 3 4 5 (quick: 1)")
    ap.add_argument("--noises", type=float, nargs="+", default=[0.0, 0.2], help="label noise levels of the grid")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"results dir (default {DEFAULT_OUT}; quick: <out>/quick)")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 2 betas x 2 lrs, a quarter of the data (~2 min)")
    args = ap.parse_args()
    out = Path(args.out) / ("quick" if args.quick else "")
    args.calib_seeds = args.calib_seeds or ([0] if args.quick else [0, 1, 2])
    args.test_seeds = args.test_seeds or ([1] if args.quick else [3, 4, 5])
    seeds = sorted(set(args.calib_seeds) | set(args.test_seeds))
    if args.quick:
        configs = grid_configs(seeds, noises=args.noises[:1], betas=(0.01, 0.5), lrs=(5e-4, 5e-3))
        base = {**BASE, **QUICK}
    else:
        configs, base = grid_configs(seeds, noises=args.noises), BASE
    t0 = time.perf_counter()
    records = run_histories(configs, out, base=base, log=lambda s: print(s, flush=True))
    seconds = total_seconds(records)
    results = {title: analyse(records, set(args.calib_seeds), set(args.test_seeds), fn) for title, fn in TRUTHS.items()}
    text = render(results, records, args, seconds)
    print(text)
    (out / "detector_calibration.md").write_text(text)
    (out / "detector_calibration.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {out / 'detector_calibration.md'}; this run {time.perf_counter() - t0:.0f}s wall")


if __name__ == "__main__":
    main()
