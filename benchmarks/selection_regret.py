"""Does the sweep recommend a trial whose answers hold? Selection rules scored against ground truth.

    .venv/bin/python benchmarks/selection_regret.py --quick          # tiny-llama, small grid: a check (~3 min)
    .venv/bin/python benchmarks/selection_regret.py --run synthetic  # run (or complete) one task's trials only
    .venv/bin/python benchmarks/selection_regret.py                  # every task; cached trials are not re-run
    .venv/bin/python benchmarks/selection_regret.py --cached-only --readme docs/sweeps.md

Tasks (full grids, every trial run to the end, one grid per seed):
- synthetic: tiny-llama on the bundled synthetic task (`trial_histories.BASE`), beta {0.01, 0.1, 0.5} x
  learning_rate {5e-5, 5e-4, 1.5e-3, 5e-3}, seeds 0-4;
- arithmetic short / long: SmolLM2-135M-Instruct in NF4 + LoRA on the arithmetic chat task
  (`trial_histories.REAL_BASE`, 8 steps), beta {0.05, 0.5} x learning_rate {1e-4, 1e-3, 3e-3}, seeds 0-2 for the
  short form and seed 0 for the long one (a long-form trial costs ~13 min on one CPU thread).

Each selection rule sees what a user's own data gives: held-out pair accuracy and the label-free health of the
generations (`trainables.generation`), never the task's checker. The checker scores the pick afterwards:
regret = the grid's best exact-answer rate - the picked trial's, and whether the picked trial's answers fell below
the reference model's. The health rule's thresholds are calibrated on one task and scored on the other, both
ways (`orchestrator.health`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from detector_calibration import cell_text, fmt, score
from readme_block import replace_readme_block
from trial_histories import BASE, DEFAULT_OUT, QUICK, REAL_BASE, run_histories, total_seconds

from trainables import health
from trainables.config import HealthSettings

SEEDS = (0, 1, 2)
SYNTHETIC_SEEDS = (0, 1, 2, 3, 4)  # a tiny-llama trial costs ~8 s
SYNTHETIC_BETAS, SYNTHETIC_LRS = (0.01, 0.1, 0.5), (5e-5, 5e-4, 1.5e-3, 5e-3)
REAL_BETAS, REAL_LRS = (0.05, 0.5), (1e-4, 1e-3, 3e-3)
REAL_MAX_LENGTH = {"short": 64, "long": 128}  # the chat template's ~40 prompt tokens + the completion


def synthetic_configs(seeds=SYNTHETIC_SEEDS, betas=SYNTHETIC_BETAS, lrs=SYNTHETIC_LRS) -> list[dict[str, Any]]:
    return [{"dpo.beta": b, "dpo.learning_rate": lr, "dpo.seed": s, "data.synthetic.seed": s,
             "data.synthetic.label_noise": 0.0}
            for s in seeds for b in betas for lr in lrs]


def arithmetic_configs(form: str, seeds=SEEDS) -> list[dict[str, Any]]:
    return [{"dpo.beta": b, "dpo.learning_rate": lr, "dpo.seed": s, "data.arithmetic.seed": s,
             "data.arithmetic.form": form, "dpo.max_length": REAL_MAX_LENGTH[form], "dpo.precompute_ref_log_probs": True}
            for s in seeds for b in REAL_BETAS for lr in REAL_LRS]


# name -> (configs, base, results subdirectory)
TASKS = {
    "synthetic": (synthetic_configs(), BASE, "regret-synthetic"),
    "arithmetic-short": (arithmetic_configs("short"), REAL_BASE, "regret-arithmetic-short"),
    # One seed: a long-form trial costs ~13 min on one thread of this 2-core CPU (probes and generations of ~45
    # tokens at every report), the short form's ~5.
    "arithmetic-long": (arithmetic_configs("long", seeds=(0,)), REAL_BASE, "regret-arithmetic-long"),
}
QUICK_TASKS = {
    "quick-a": (synthetic_configs((0, 1), betas=(0.01, 0.5), lrs=(5e-4, 5e-3)), {**BASE, **QUICK}, "regret-quick"),
}


def run_task(name: str, tasks: dict, out: Path, cache_dir: str | None, cached_only: bool) -> list[dict[str, Any]]:
    configs, base, sub = tasks[name]
    log = lambda s: print(f"[{name}] {s}", flush=True)
    if cached_only:
        from trial_histories import CACHE_FILE, cache_key, load_cache, merged

        done = load_cache(out / sub / CACHE_FILE)
        recs = [done[k] for c in configs if (k := cache_key(merged(c, base))) in done]
        log(f"{len(recs)} of {len(configs)} trials cached")
        return recs
    return run_histories(configs, out / sub, base=base, cache_dir=cache_dir, log=log)


# ------------------------------------------------------------------------------------------- ground truth

def final(rec: dict[str, Any]) -> dict[str, Any]:
    return rec["history"][-1]


def answers(rec: dict[str, Any]) -> float:
    """The checker's verdict on a trial: its greedy probe answers' exact rate at its last report."""
    return float(final(rec)["answer_exact_rate"])


def fell_below_reference(rec: dict[str, Any]) -> bool:
    """Ground truth of the health rule: the trial's answers ended below the reference model's."""
    return answers(rec) < float(final(rec)["ref_answer_exact_rate"]) - 1e-9


def judgeable(rec: dict[str, Any]) -> bool:
    """Whether answers could fall below the reference's at all (a reference that answers none cannot be undercut)."""
    return float(final(rec)["ref_answer_exact_rate"]) > 0


# ------------------------------------------------------------------------------------------- the health rule

# kl_per_token thresholds tried (nats/token); the other parts stay at their shipped, gross-breakage values.
KL_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
MAX_FALSE_ALARMS = 0.10  # the calibration's budget: the most-sensitive threshold whose false-alarm rate stays under


def thresholds(kl_per_token: float) -> HealthSettings:
    """The health rule with `kl_per_token` calibrated and the other parts at their shipped values."""
    return HealthSettings(kl_per_token=kl_per_token)


def unhealthy(rec: dict[str, Any], th: HealthSettings) -> bool:
    """Flagged as the trial would be: unhealthy at any report (the flag is sticky)."""
    return health.first_unhealthy(rec["history"], th) is not None


def score_rule(recs: list[dict[str, Any]], th: HealthSettings) -> dict[str, Any]:
    judged = [r for r in recs if judgeable(r)]
    return score([0 if unhealthy(r, th) else None for r in judged], [0 if fell_below_reference(r) else None
                                                                       for r in judged])


def calibrate(recs: list[dict[str, Any]]) -> float:
    """kl_per_token: the most sensitive (lowest) threshold of KL_GRID whose false-alarm rate on `recs` is at most
    MAX_FALSE_ALARMS."""
    for t in KL_GRID:
        if (score_rule(recs, thresholds(t))["false_alarm_rate"] or 0) <= MAX_FALSE_ALARMS:
            return t
    return KL_GRID[-1]


# ------------------------------------------------------------------------------------------- selection rules

def grids(recs: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """One full grid per seed; a seed whose grid is still being run is left out (a rule could only pick among
    what exists)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for r in recs:
        out.setdefault(r["config"]["dpo.seed"], []).append(r)
    cells = {(r["config"]["dpo.beta"], r["config"]["dpo.learning_rate"]) for r in recs}
    return {s: g for s, g in sorted(out.items()) if len(g) == len(cells)}


def records_of(grid: list[dict[str, Any]], th: HealthSettings | None):
    """The grid as the analysis sees it: TrialRecords whose histories carry the flag the trial would have raised
    with the health rule at `th` (None: no flag)."""
    import pandas as pd

    from orchestrator.records import TrialRecord

    out = []
    for i, r in enumerate(grid):
        hist = pd.DataFrame(r["history"])
        if "eval_pairs" not in hist:  # histories from before reports carried it: the config's held-out split
            c = r["config"]
            hist["eval_pairs"] = c.get("data.synthetic.num_eval") or c.get("data.arithmetic.num_eval")
        if th is not None:
            at = health.first_unhealthy(r["history"], th)
            flags = [float(at is not None and k >= at) for k in range(len(hist))]
            hist["reward_hack_flag"] = flags
            hist["reward_hack_signal"] = ["health" if f else None for f in flags]
        params = {"beta": r["config"]["dpo.beta"], "learning_rate": r["config"]["dpo.learning_rate"]}
        out.append(TrialRecord(trial_id=f"t{i}", params=params, history=hist, expected_reports=len(hist)))
    return out


def sweet_spot_trial(grid: list[dict[str, Any]], th: HealthSettings | None, tie_break: str = "score",
                     tie_se: float = 1.0, metric: str = "eval_rewards_accuracies") -> int | None:
    """The index of the trial in the analysis' sweet-spot cell (`orchestrator.analysis.choose_sweet_spot`, the
    product's own choice: the guard, flagged neighbours as cliffs, near ties to the closest to the reference);
    None when nothing is eligible."""
    from orchestrator.analysis import choose_sweet_spot
    from orchestrator.eligibility import left_out
    from orchestrator.records import results_table

    table = results_table(records_of(grid, th), metric, "max")
    spot = choose_sweet_spot(table, metric, "max", ["beta", "learning_rate"], left_out(table, None), True, tie_se,
                             tie_break)
    if spot is None:
        return None
    hit = table[(table["beta"] == spot.values["beta"]) & (table["learning_rate"] == spot.values["learning_rate"])]
    return int(hit.index[0])


def best_trial(grid: list[dict[str, Any]], th: HealthSettings | None, metric: str = "eval_rewards_accuracies",
               ) -> int | None:
    """analysis.pick_best: the best eligible trial by the metric alone, ties to the one closest to the reference."""
    from orchestrator.analysis import pick_best
    from orchestrator.records import results_table

    table = results_table(records_of(grid, th), metric, "max")
    best = pick_best(table, metric, "max")
    return None if best is None else int(table.index[table["trial"] == best["trial"]][0])


TIE_SES = (0.5, 1.0, 2.0)
RULES = {
    "pair accuracy (best trial)": lambda g, th: best_trial(g, None),
    "pair accuracy (sweet spot)": lambda g, th: sweet_spot_trial(g, None),
    "pair accuracy + health guard (best trial)": lambda g, th: best_trial(g, th),
    "pair accuracy + health guard (sweet spot)": lambda g, th: sweet_spot_trial(g, th),
    **{f"pair accuracy + health guard + near ties ({k:g} SE) to the least KL (sweet spot)":
       (lambda g, th, k=k: sweet_spot_trial(g, th, tie_break="closest", tie_se=k)) for k in TIE_SES},
}


def regret_rows(recs: list[dict[str, Any]], th: HealthSettings) -> dict[str, list[dict[str, Any]]]:
    """rule -> one row per seed: regret, the pick's answers, whether they fell below the reference's."""
    out: dict[str, list[dict[str, Any]]] = {}
    for seed, grid in grids(recs).items():
        best = max(answers(r) for r in grid)
        for name, rule in RULES.items():
            i = rule(grid, th)
            pick = grid[i] if i is not None else None
            out.setdefault(name, []).append({
                "seed": seed, "best": best, "picked": None if pick is None else answers(pick),
                "regret": None if pick is None else best - answers(pick),
                "below_reference": None if pick is None else fell_below_reference(pick),
                "cell": None if pick is None else (pick["config"]["dpo.beta"], pick["config"]["dpo.learning_rate"])})
    return out


def analyse(tasks: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    names = [n for n, recs in tasks.items() if recs]
    # The health rule: calibrated on one task, scored on each other task; the shipped value on all of them.
    cross = []
    for a in [n for n in names if any(judgeable(r) for r in tasks[n])]:  # a task nothing can fall below calibrates nothing
        t = calibrate(tasks[a])
        for b in names:
            if b != a:
                cross.append({"calibrated_on": a, "threshold": t, "scored_on": b,
                              **score_rule(tasks[b], thresholds(t))})
    shipped = calibrate([r for n in names for r in tasks[n]])
    regret = {n: regret_rows(tasks[n], thresholds(shipped)) for n in names}
    return {"shipped_kl_per_token": shipped, "cross_task": cross,
            "within_task": {n: {"threshold": shipped, **score_rule(tasks[n], thresholds(shipped))} for n in names},
            "regret": regret, "trials": {n: len(tasks[n]) for n in names}}


def seed_text(row: dict[str, Any]) -> str:
    """'seed 0 0.047 (0.5 x 0.0015)', a '*' where the pick's answers fell below the reference's."""
    cell = "-" if row["cell"] is None else f"{row['cell'][0]:g} x {row['cell'][1]:g}"
    return f"seed {row['seed']} {fmt(row['regret'], 3)} ({cell}{'*' if row['below_reference'] else ''})"


def render(result: dict[str, Any], seconds: float) -> tuple[str, str]:
    """(regret block, calibration block) of docs/sweeps.md."""
    names = list(result["regret"])
    shipped = result["shipped_kl_per_token"]
    lines = [(f"Selection rules run without the checker, scored by it (regret = the grid's best exact-answer rate - "
             f"the pick's; one full grid per seed; {sum(result['trials'].values())} trials, {seconds / 60:.0f} "
             "trial-minutes). Health guard: the shipped rule (`trainables.health`, kl_per_token "
             f"{shipped:g})."), "",
             "| rule | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for rule in RULES:
        cells = []
        for n in names:
            rows = result["regret"][n][rule]
            regrets = [r["regret"] for r in rows if r["regret"] is not None]
            below = sum(bool(r["below_reference"]) for r in rows)
            cells.append(f"max {max(regrets):.3f}, mean {sum(regrets) / len(regrets):.3f}; below ref {below}/{len(rows)}"
                         if regrets else "no pick")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (regret; the picked cell beta x lr; * answers below the reference's):", ""]
    for n in names:
        for rule in RULES:
            rows = result["regret"][n][rule]
            lines.append(f"- {n}, {rule}: " + "; ".join(seed_text(r) for r in rows))
    calib = [(f"Health rule, ground truth 'answers ended below the reference model's' (trials whose reference answers "
             f"none are left out); kl_per_token calibrated as the most sensitive threshold with at most "
             f"{MAX_FALSE_ALARMS:.0%} false alarms on the calibration task; the other parts at their shipped values."), "",
             "| calibrated on | kl_per_token | scored on | result |", "|---|---|---|---|"]
    calib += [f"| {c['calibrated_on']} | {c['threshold']:g} | {c['scored_on']} | {cell_text(c)} |"
              for c in result["cross_task"]]
    calib += ["", f"Shipped default (`trainables.config.HealthSettings`): kl_per_token {shipped:g}, calibrated on every "
              "task together; on each: " + "; ".join(f"{n}: {cell_text(s)}" for n, s in result["within_task"].items())
              + ".", "", "P: precision, R: recall, FA: false alarms (flags / trials whose answers held)."]
    return "\n".join(lines) + "\n", "\n".join(calib) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"results dir (default {DEFAULT_OUT})")
    ap.add_argument("--cache-dir", default=None, help="model cache (default $DPO_SWEEP_CACHE or /tmp/dpo-cache)")
    ap.add_argument("--quick", action="store_true", help="tiny-llama only, a small grid (a check that it works)")
    ap.add_argument("--run", choices=sorted(TASKS), action="append", help="only run these tasks' trials, no analysis")
    ap.add_argument("--cached-only", action="store_true", help="analyse the trials already cached; run nothing")
    ap.add_argument("--readme", default=None, help="rewrite the README blocks selection_regret*")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()
    if args.run:
        for name in args.run:
            recs = run_task(name, TASKS, out, args.cache_dir, cached_only=False)
            print(f"[{name}] {len(recs)} trials, {total_seconds(recs):.0f} trial-seconds")
        return
    tasks = QUICK_TASKS if args.quick else TASKS
    records = {name: run_task(name, tasks, out, args.cache_dir, args.cached_only) for name in tasks}
    if args.quick:  # one grid split in two halves that stand in for two tasks
        recs = records.pop("quick-a")
        records = {"beta 0.01": [r for r in recs if r["config"]["dpo.beta"] == 0.01],
                   "beta 0.5": [r for r in recs if r["config"]["dpo.beta"] == 0.5]}
    result = analyse(records)
    regret_text, calib_text = render(result, sum(total_seconds(r) for r in records.values()))
    print(regret_text)
    print(calib_text)
    stem = out / ("selection_regret_quick" if args.quick else "selection_regret")
    stem.with_suffix(".md").write_text(regret_text + "\n" + calib_text)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    if args.readme:
        replace_readme_block(Path(args.readme), "selection_regret", regret_text)
        replace_readme_block(Path(args.readme), "health_calibration", calib_text)
        print(f"rewrote the selection_regret and health_calibration blocks of {args.readme}")
    print(f"wrote {stem.with_suffix('.md')}; this run {time.perf_counter() - t0:.0f}s wall")


if __name__ == "__main__":
    main()
