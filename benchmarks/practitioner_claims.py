"""The practitioner's DPO claims, checked on the synthetic task (tiny-llama, CPU), mean +- standard error over seeds.

    .venv/bin/python benchmarks/practitioner_claims.py --quick     # 2 seeds, tiny data: ~2 min, a check
    .venv/bin/python benchmarks/practitioner_claims.py             # 10 seeds; reuses detector_calibration's grid
    .venv/bin/python benchmarks/practitioner_claims.py --seeds 0 1 2 3 4 5 --grid-seeds 0 1 2 3 4 5

(i)   A high learning rate with a low beta degrades the policy: lr 5e-3 x beta 0.01 vs lr 5e-4 x beta 0.1
      (clean data, 2 epochs), and the degraded fraction by lr and by beta over the whole noise-0 grid of
      `detector_calibration.py` (same cache, same ground truth: answer quality >= 0.2 or clean accuracy >= 0.05
      below its running peak).
(ii)  Label smoothing 0.1-0.2 helps under 40% label noise: cDPO (`sigmoid` + label_smoothing e) and robust DPO
      (`robust`, e) vs e = 0, final and peak clean held-out accuracy (lr 5e-4, beta 0.1, 3 epochs); differences
      are paired by seed.
(iii) Extra epochs hurt under heavy noise: 1 vs 3 epochs at 40% noise (the 3-epoch run is (ii)'s e = 0), and
      whether the model memorises flipped pairs: train reward accuracy on the noisy train set above 1 - noise
      = 0.6 (a model that learnt the clean rule scores 0.6 there). A memorisation stress test beside it: 128
      train pairs, lr 1.5e-3, 1 vs 10 epochs.

Histories are cached in `<out>/trial_histories.jsonl`. Writes `practitioner_claims.md` and `.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from detector_calibration import degraded_at, grid_configs
from trial_histories import BASE, DEFAULT_OUT, QUICK, cache_key, merged, run_histories, total_seconds

NOISE = 0.4
MODERATE = {"dpo.beta": 0.1, "dpo.learning_rate": 5e-4}
HOT = {"dpo.beta": 0.01, "dpo.learning_rate": 5e-3}
SMOOTHING = (("sigmoid", 0.0), ("sigmoid", 0.1), ("sigmoid", 0.2), ("robust", 0.1), ("robust", 0.2))
STRESS = {"data.synthetic.num_train": 128, "dpo.learning_rate": 1.5e-3, "dpo.beta": 0.1, "dpo.reports_per_epoch": 1}
STRESS_EPOCHS = (1, 10)
# Smoothing again where the model does fit flipped pairs (the stress setting, 10 epochs): the regime it is for.
STRESS_SMOOTHING = (("sigmoid", 0.0), ("sigmoid", 0.2), ("robust", 0.2))


def cell(seed: int, **overrides) -> dict[str, Any]:
    return {**MODERATE, "dpo.num_train_epochs": 2, "dpo.seed": seed, "data.synthetic.seed": seed,
            "data.synthetic.label_noise": 0.0, **overrides}


def noisy(seed: int, loss: str, e: float, epochs: int) -> dict[str, Any]:
    return cell(seed, **{"data.synthetic.label_noise": NOISE, "dpo.num_train_epochs": epochs, "dpo.loss_type": loss,
                         "dpo.label_smoothing": e})


def stress(seed: int, epochs: int, loss: str = "sigmoid", e: float = 0.0) -> dict[str, Any]:
    smoothing = {"dpo.loss_type": loss, "dpo.label_smoothing": e} if e else {}  # e = 0: the same key as before
    return cell(seed, **{"data.synthetic.label_noise": NOISE, "dpo.num_train_epochs": epochs, **STRESS, **smoothing})


def mean_and_se(xs: Sequence[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.mean(xs), (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan"))


def mean_se(xs: Sequence[float]) -> str:
    m, se = mean_and_se(xs)
    return "n/a" if math.isnan(m) else f"{m:.3f} ± {se:.3f}"


def effect(xs: Sequence[float], unit: str = "") -> tuple[int, str]:
    """(+1 / -1 / 0, text): the sign of a mean difference when it is beyond 2 standard errors."""
    m, se = mean_and_se(xs)
    sign = 0 if not se > 0 or abs(m) <= 2 * se else (1 if m > 0 else -1)
    return sign, f"{m:+.3f} ± {se:.3f}{unit}"


def verdicts(facts: dict[str, Any]) -> list[str]:
    """One line per claim, from the numbers (a difference counts when it exceeds 2 standard errors)."""
    hot, mod = facts["lr 5e-3 x beta 0.01"], facts["lr 5e-4 x beta 0.1"]
    m_hot, se_hot = mean_and_se(hot["answer"])
    m_mod, se_mod = mean_and_se(mod["answer"])
    gap = m_mod - m_hot
    ok = gap > 2 * math.hypot(se_hot, se_mod) and hot["answer_degraded"] > mod["answer_degraded"]
    lines = [(f"- (i) {'SUPPORTED' if ok else 'NOT SUPPORTED'}: answers below 0.2 at the end in {hot['collapsed']}/"
             f"{hot['n']} hot runs vs {mod['collapsed']}/{mod['n']} moderate (a fall >= 0.2 from a peak seen in "
             f"{hot['answer_degraded']} vs {mod['answer_degraded']}); final answer_exact_rate "
             f"{m_hot:.3f} vs {m_mod:.3f} (gap {gap:+.3f} ± {math.hypot(se_hot, se_mod):.3f}).")]
    parts, signs = [], []
    for key in ("sigmoid 0.1", "sigmoid 0.2", "robust 0.1", "robust 0.2"):
        sign, text = effect(facts[key]["d_final"])
        signs.append(sign)
        parts.append(f"{key.replace('sigmoid', 'cDPO')} {text}")
    word = "SUPPORTED" if all(s > 0 for s in signs) else ("PARTLY SUPPORTED" if any(s > 0 for s in signs)
                                                          else "NOT SUPPORTED")
    lines.append(f"- (ii) {word}: final clean accuracy minus e=0, paired by seed: " + "; ".join(parts) + ".")
    stress_parts = [f"{k[7:].replace('sigmoid', 'cDPO')} {effect(f['d_final'])[1]} (peak {effect(f['d_peak'])[1]})"
                    for k, f in facts.items() if k.startswith("stress ") and not k.endswith(" 0.0")]
    if stress_parts:
        lines.append("- (ii) where flipped pairs are memorised (stress setting), final clean accuracy minus e=0: "
                     + "; ".join(stress_parts) + ".")
    for key, f in facts.items():
        if key.startswith("epochs "):
            sign, text = effect(f["d_final"])
            m, se = mean_and_se(f["train_acc_end"])
            memorised = m > (1 - NOISE) + 2 * se
            _, below = effect(f["below_peak"])
            lines.append(f"- (iii) {key[7:]}: {'SUPPORTED' if sign < 0 else 'NOT SUPPORTED'}: more epochs change "
                         f"final clean accuracy by {text} (the long run ends {below} from its own peak); "
                         f"train accuracy on the noisy labels at the end {m:.3f} ± "
                         f"{se:.3f} ({'above' if memorised else 'not above'} 1 - noise = {1 - NOISE:.1f}: flipped "
                         f"pairs "
                         f"{'memorised' if memorised else 'not memorised'}).")
    return lines


def final(rec: dict, key: str) -> float:
    return rec["history"][-1][key]


def peak(rec: dict, key: str) -> float:
    return max(m[key] for m in rec["history"])


def train_acc_end(rec: dict) -> float:
    """Train reward accuracy (on the noisy labels) over the last report interval."""
    return rec["history"][-1].get("train_rewards_accuracies", float("nan"))


def max_train_acc(rec: dict) -> float:
    return max(m.get("train_rewards_accuracies", float("nan")) for m in rec["history"])


def degraded_frac(recs: list[dict]) -> str:
    k = sum(degraded_at(r["history"]) is not None for r in recs)
    return f"{k}/{len(recs)}"


def answer_degraded_frac(recs: list[dict]) -> str:
    k = sum(degraded_at(r["history"], accuracy_drop=2.0) is not None for r in recs)
    return f"{k}/{len(recs)}"


def smoothing_row(lines: list[str], setting: str, recs: list[dict], ref: list[dict], loss: str,
                  e: float) -> dict[str, list[float]]:
    """One row of (ii): clean accuracy with smoothing e, and its paired difference from e = 0."""
    d_final = [final(r, "eval_rewards_accuracies") - final(q, "eval_rewards_accuracies")
               for r, q in zip(recs, ref, strict=True)]
    d_peak = [peak(r, "eval_rewards_accuracies") - peak(q, "eval_rewards_accuracies")
              for r, q in zip(recs, ref, strict=True)]
    name = "cDPO (sigmoid)" if loss == "sigmoid" else "robust"
    lines.append(f"| {setting} | {name} | {e:g} | {len(recs)} | "
                 f"{mean_se([final(r, 'eval_rewards_accuracies') for r in recs])} | "
                 f"{mean_se([peak(r, 'eval_rewards_accuracies') for r in recs])} | "
                 f"{mean_se(d_final) if e else '-'} | {mean_se(d_peak) if e else '-'} | "
                 f"{mean_se([final(r, 'answer_exact_rate') for r in recs])} |")
    return {"d_final": d_final, "d_peak": d_peak}


def claim_rows(by_key: dict[str, dict], base: dict[str, Any], seeds: Sequence[int],
               grid: list[dict]) -> tuple[list[str], dict]:
    """Markdown lines and the numbers behind the verdicts; `by_key`: cached records by cache key."""

    def get(c, base):
        return by_key[cache_key(merged(c, base))]

    lines, facts = [], {}
    # (i)
    lines += ["## (i) high lr x low beta degrades the policy (clean data, 2 epochs)", "",
              ("| cell | n | degraded (any) | degraded (answers) | answers < 0.2 at end | final answer_exact_rate | "
               "final clean accuracy | final eval_abs_logratio |"), "|---|---|---|---|---|---|---|---|"]
    for name, over in (("lr 5e-3 x beta 0.01", HOT), ("lr 5e-4 x beta 0.1", MODERATE)):
        recs = [get(cell(s, **over), base) for s in seeds]
        collapsed = sum(final(r, "answer_exact_rate") < 0.2 for r in recs)
        lines.append(f"| {name} | {len(recs)} | {degraded_frac(recs)} | {answer_degraded_frac(recs)} | "
                     f"{collapsed}/{len(recs)} | "
                     f"{mean_se([final(r, 'answer_exact_rate') for r in recs])} | "
                     f"{mean_se([final(r, 'eval_rewards_accuracies') for r in recs])} | "
                     f"{mean_se([final(r, 'eval_abs_logratio') for r in recs])} |")
        facts[name] = {"n": len(recs), "answer": [final(r, "answer_exact_rate") for r in recs],
                       "answer_degraded": sum(degraded_at(r["history"], accuracy_drop=2.0) is not None for r in recs),
                       "collapsed": collapsed}
    grid_recs = [get(c, base) for c in grid]
    if grid_recs:
        lines += ["", "Whole noise-0 grid, degraded (any) / degraded (answers) / final answer_exact_rate:", "",
                  "| marginal | level | n | degraded (any) | degraded (answers) | final answer_exact_rate |",
                  "|---|---|---|---|---|---|"]
        for label, key in (("lr", "dpo.learning_rate"), ("beta", "dpo.beta")):
            for level in sorted({r["config"][key] for r in grid_recs}):
                recs = [r for r in grid_recs if r["config"][key] == level]
                lines.append(f"| {label} | {level:g} | {len(recs)} | {degraded_frac(recs)} | "
                             f"{answer_degraded_frac(recs)} | "
                             f"{mean_se([final(r, 'answer_exact_rate') for r in recs])} |")
    # (ii)
    lines += ["", f"## (ii) label smoothing under {NOISE:.0%} label noise", "",
              ("| setting | loss | e | n | final clean acc | peak clean acc | final - (e=0), paired | "
               "peak - (e=0), paired | final answer_exact_rate |"), "|---|---|---|---|---|---|---|---|---|"]
    for setting, make, variants, tag in (
            ("512 pairs, lr 5e-4, 3 epochs", lambda s, loss, e: noisy(s, loss, e, 3), SMOOTHING, ""),
            ("128 pairs, lr 1.5e-3, 10 epochs (stress)", lambda s, loss, e: stress(s, STRESS_EPOCHS[-1], loss, e),
             STRESS_SMOOTHING, "stress ")):
        ref = [get(make(s, "sigmoid", 0.0), base) for s in seeds]
        for loss, e in variants:
            facts[f"{tag}{loss} {e}"] = smoothing_row(lines, setting, [get(make(s, loss, e), base) for s in seeds],
                                                      ref, loss, e)
    # (iii)
    lines += ["", (f"## (iii) epochs under {NOISE:.0%} label noise (train accuracy on noisy labels: "
                   f"> {1 - NOISE:.1f} = "
              "fitting flipped pairs)"), "",
              ("| setting | epochs | n | final clean acc | peak clean acc | train acc (noisy labels), last interval | "
              "max train acc over reports | final train loss |"), "|---|---|---|---|---|---|---|---|"]
    for name, make, epochs_list in (("512 pairs, lr 5e-4", lambda s, ep: noisy(s, "sigmoid", 0.0, ep), (1, 3)),
                                    ("128 pairs, lr 1.5e-3 (stress)", stress, STRESS_EPOCHS)):
        per = {}
        for ep in epochs_list:
            recs = [get(make(s, ep), base) for s in seeds]
            per[ep] = recs
            lines.append(f"| {name} | {ep} | {len(recs)} | "
                         f"{mean_se([final(r, 'eval_rewards_accuracies') for r in recs])}"
                         f" | {mean_se([peak(r, 'eval_rewards_accuracies') for r in recs])} | "
                         f"{mean_se([train_acc_end(r) for r in recs])} | "
                         f"{mean_se([max_train_acc(r) for r in recs])} | "
                         f"{mean_se([final(r, 'train_loss') for r in recs])} |")
        lo, hi = epochs_list
        d = [final(b, "eval_rewards_accuracies") - final(a, "eval_rewards_accuracies")
             for a, b in zip(per[lo], per[hi], strict=True)]
        lines.append(f"| {name}: {hi} - {lo} epochs, paired | | {len(d)} | {mean_se(d)} | | | | |")
        below_peak = [final(r, "eval_rewards_accuracies") - peak(r, "eval_rewards_accuracies") for r in per[hi]]
        lines.append(f"| {name}: {hi} epochs, final - own peak | | {len(d)} | {mean_se(below_peak)} | | | | |")
        facts[f"epochs {name}"] = {"d_final": d, "train_acc_end": [train_acc_end(r) for r in per[hi]],
                                   "below_peak": below_peak}
    return lines, facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds per cell (default 0..9; quick: 0 1)")
    ap.add_argument("--grid-seeds", type=int, nargs="+", default=None,
                    help="seeds of the noise-0 beta x lr grid for (i)'s marginals (default 0..5, as "
                         "detector_calibration; quick: none)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"results dir (default {DEFAULT_OUT}; quick: <out>/quick)")
    ap.add_argument("--quick", action="store_true", help="2 seeds, a quarter of the data, no grid (~2 min)")
    args = ap.parse_args()
    out = Path(args.out) / ("quick" if args.quick else "")
    seeds = args.seeds or ([0, 1] if args.quick else list(range(10)))
    grid_seeds = args.grid_seeds if args.grid_seeds is not None else ([] if args.quick else list(range(6)))
    base = {**BASE, **QUICK} if args.quick else BASE
    configs = [cell(s, **over) for over in (HOT, MODERATE) for s in seeds]
    configs += [noisy(s, loss, e, 3) for s in seeds for loss, e in SMOOTHING]
    configs += [noisy(s, "sigmoid", 0.0, 1) for s in seeds]
    configs += [stress(s, ep) for s in seeds for ep in STRESS_EPOCHS]
    configs += [stress(s, STRESS_EPOCHS[-1], loss, e) for s in seeds for loss, e in STRESS_SMOOTHING if e]
    grid = grid_configs(grid_seeds, noises=(0.0,)) if grid_seeds else []
    t0 = time.perf_counter()
    records = run_histories(configs + grid, out, base=base, log=lambda s: print(s, flush=True))
    lines, facts = claim_rows({r["key"]: r for r in records}, base, seeds, grid)
    text = "\n".join([
        "# The practitioner's claims on the synthetic task (tiny-llama, CPU); mean ± standard error over seeds", "",
        (f"Seeds {seeds}; compute {total_seconds(records) / 60:.1f} min of trials "
        f"({len({r['key'] for r in records})} trials)."), "", *lines, "",
        "## Verdicts (a difference counts beyond 2 standard errors)", "", *verdicts(facts)]) + "\n"
    print(text)
    (out / "practitioner_claims.md").write_text(text)
    (out / "practitioner_claims.json").write_text(json.dumps(facts, indent=1))
    print(f"wrote {out / 'practitioner_claims.md'}; this run {time.perf_counter() - t0:.0f}s wall")


if __name__ == "__main__":
    main()
