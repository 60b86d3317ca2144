"""The end of every sweep: results table, sweet spot, statistics, plots and the findings in words.

Works on plain `TrialRecord`s (`orchestrator.records`), so it can be re-run on a finished sweep without
training anything. Plots are PNGs (`orchestrator.plots`); the table is CSV. The result, `SweepAnalysis`,
carries every finding as a field: the report and MLflow read those, and `summary` is their text.

Ranking: a trial's score is its metric at its last report. Only trials that ran to the end are
ranked for the sweet spot while any did: an ASHA-stopped trial's last value is from an earlier
point in training and is not comparable. Ties go to the smaller drift from the reference.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator import plots, stats
from orchestrator.anova import AnovaResult, sensitivity, two_way_anova
from orchestrator.config import TIE_BREAK, TIE_SE
from orchestrator.costs import SweepCost
from orchestrator.eligibility import drifted, left_out
from orchestrator.recommendation import recommendation
from orchestrator.records import COMPLETED, DIVERGED, OUT_OF_MEMORY, TrialRecord, results_table
from orchestrator.stats import value_text
from orchestrator.sweet_spot import SweetSpot, robust_sweet_spot


@dataclass
class SweepAnalysis:
    table: pd.DataFrame
    metric: str
    mode: str
    best: dict[str, Any] | None  # the best single trial (its adapter is the one to take)
    knobs: list[str] = field(default_factory=list)  # swept knobs (seeds are replicates, not knobs)
    sweet_spot: SweetSpot | None = None  # the best region, not the luckiest cell
    budget: Budget | None = None  # the common budget the trials are compared at
    anova: AnovaResult | None = None  # the metric on beta x learning_rate (or the two knobs swept)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    recommendation: str = ""
    findings: list[str] = field(default_factory=list)  # diverged, out of memory, drifted, flagged trials
    cost: SweepCost | None = None  # what the sweep cost and what stopping saved
    plots: dict[str, Path] = field(default_factory=dict)
    table_path: Path | None = None
    reports: list[Path] = field(default_factory=list)  # report.html, report.md once written
    # What the trials generate, side by side: (label, trial, completions rows of its best checkpoint)
    completions: list[tuple[str, str, list[dict[str, Any]]]] = field(default_factory=list)
    compute: str = ""  # the compute dtype and device the figures came from, e.g. 'bfloat16 on cuda'

    @property
    def counts(self) -> dict[str, int]:
        """Trials by status."""
        return self.table["status"].value_counts().to_dict() if len(self.table) else {}

    @property
    def trials_line(self) -> str:
        return f"{len(self.table)} trials: " + ", ".join(f"{n} {s}" for s, n in self.counts.items())

    def _where(self, row: dict[str, Any]) -> str:
        return ", ".join(f"{k}={value_text(row[k])}" for k in self.knobs)

    @property
    def sweet_spot_line(self) -> str:
        spot, best, m = self.sweet_spot, self.best, self.metric
        at = f", at report {self.budget.report} of {self.budget.of}" if self.budget and self.budget.report < self.budget.of else ""
        if spot:
            return (f"Sweet spot: {', '.join(f'{k}={value_text(v)}' for k, v in spot.values.items())} -> {m} "
                    f"{spot.mean:.4f} (neighbourhood average {spot.score:.4f}, {spot.n} trial(s) in the cell{at})")
        if best:
            where = f"{self._where(best)} -> " if self.knobs else ""
            return f"Sweet spot: {where}{m} {best[m]:.4f} (trial {best['trial']})"
        return f"No trial reported {m}: no sweet spot."

    @property
    def best_line(self) -> str:
        """The best single trial, when the sweet spot is a cell (else the sweet spot line names it)."""
        if not (self.best and self.sweet_spot):
            return ""
        return (f"Best single trial: {self._where(self.best)} -> {self.metric} {self.best[self.metric]:.4f} "
                f"(trial {self.best['trial']}; its adapter is the run's best_adapter)")

    @property
    def sensitivity_line(self) -> str:
        if len(self.sensitivity) < 2:
            return ""
        return (f"Knobs by influence on {self.metric} (eta^2): "
                + ", ".join(f"{k} {v:.2f}" for k, v in self.sensitivity))

    @property
    def summary(self) -> str:
        lines = [self.trials_line, self.sweet_spot_line, self.best_line,
                 f"Recommendation: {self.recommendation}" if self.recommendation else "",
                 self.anova.describe() if self.anova is not None else "", self.sensitivity_line, *self.findings,
                 self.cost.describe() if self.cost else "",
                 f"Figures computed in {self.compute}." if self.compute else ""]
        return "\n".join(line for line in lines if line)

def pick_best(table: pd.DataFrame, metric: str, mode: str, max_abs_logratio: float | None = None) -> dict | None:
    """The best eligible trial by its last value, among those that ran to the end while any did: the trial
    whose adapter to take."""
    ranked = table[table[metric].notna() & (left_out(table, max_abs_logratio) == "")]
    finished = ranked[ranked["status"] == COMPLETED]
    pool = finished if len(finished) else ranked
    if not len(pool):
        return None
    # Ties (common: accuracy on a few hundred pairs moves in steps of 1/n) go to the policy closest
    # to its reference, the safer of equals.
    keys, ascending = [metric], [mode == "min"]
    if "eval_abs_logratio" in pool:
        keys.append("eval_abs_logratio")
        ascending.append(True)
    return table.loc[pool.sort_values(keys, ascending=ascending).index[0]].to_dict()


@dataclass
class Budget:
    """The common budget trials are compared at: the last report every eligible trial reached."""

    report: int  # 1-based
    of: int  # the most reports any eligible trial made
    step: int | None  # the optimizer step of that report (the first trial's)
    compared: int  # eligible trials compared there

    @property
    def describe(self) -> str:
        step = f" (step {self.step})" if self.step is not None else ""
        if self.report >= self.of:
            return f"compared at report {self.report}{step}, the end of every compared trial's training"
        return (f"compared at report {self.report} of {self.of}{step}, the last report all {self.compared} "
                "eligible trials reached (trials stopped early are compared with the rest at the same budget)")


def common_budget(records: list[TrialRecord], eligible: set[str]) -> Budget | None:
    counts = {r.trial_id: r.reports for r in records if r.trial_id in eligible and r.reports > 0}
    if not counts:
        return None
    report = min(counts.values())
    first = next(r for r in records if counts.get(r.trial_id) == report)
    step = first.at("step", report - 1)
    return Budget(report=report, of=max(counts.values()), step=None if math.isnan(step) else int(step),
                  compared=len(counts))


def findings(table: pd.DataFrame, params: list[str], max_abs_logratio: float | None) -> list[str]:
    """Trials to know about, named by their `params` (seeds too): diverged, out of memory, drifted, flagged."""
    if not len(table):
        return []
    named = params or ["trial"]

    def names(rows: pd.DataFrame) -> str:
        return "; ".join(",".join(f"{k}={value_text(row[k])}" for k in named) for _, row in rows.iterrows())

    out = []
    diverged = table[table["status"] == DIVERGED]
    if len(diverged):
        out.append(f"Diverged (a NaN or Inf loss or metric; stopped and left out): {names(diverged)}")
    oom = table[table["status"] == OUT_OF_MEMORY]
    if len(oom):
        out.append(f"Out of memory: {names(oom)}. Lower dpo.per_device_train_batch_size (raise "
                   "dpo.gradient_accumulation_steps to keep the effective batch) or dpo.max_length, or give "
                   "each trial more memory (resources.gpu_per_trial; fewer trials at once)")
    far = table[drifted(table, max_abs_logratio)]
    if len(far):
        out.append(f"Left out of the sweet spot, policy more than {max_abs_logratio:g} nats from the reference "
                   f"(mean |log pi - log pi_ref| on held-out completions): {names(far)}")
    flagged = table[table["reward_hacking"] != ""]
    if len(flagged):
        by = ", ".join(f"{sig} {n}" for sig, n in flagged["reward_hacking"].value_counts().items())
        out.append(f"Flagged, so left out of the sweet spot and of promotion, {len(flagged)}/{len(table)} trial(s) "
                   f"(by signal: {by}): {names(flagged)}")
    return out


def completion_examples(records: list[TrialRecord], table: pd.DataFrame, best: dict[str, Any] | None,
                        ) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """The completions (trainables.generation) of the best trial and of the trial whose generations the
    reference model found least plausible (highest gen_ref_nll_per_token at its last report), each from its
    best checkpoint where that is on a local disk."""
    from trainables.generation import TABLE_FILE

    def rows_of(trial: str) -> list[dict[str, Any]]:
        rec = next((r for r in records if r.trial_id == trial), None)
        path = Path(rec.best_checkpoint, TABLE_FILE) if rec is not None and rec.best_checkpoint else None
        try:
            return json.loads(path.read_text()) if path is not None and path.is_file() else []
        except (OSError, ValueError):
            return []

    shown = []
    if best is not None:
        shown.append(("best trial", best["trial"]))
    if "gen_ref_nll_per_token" in table and table["gen_ref_nll_per_token"].notna().any():
        worst = table.loc[table["gen_ref_nll_per_token"].idxmax(), "trial"]
        if best is None or worst != best["trial"]:
            shown.append(("least plausible generations (highest gen_ref_nll_per_token)", worst))
    return [(label, trial, rows) for label, trial in shown if (rows := rows_of(trial))]


def guard_sentence(table: pd.DataFrame, knobs: list[str]) -> str:
    """The guard's verdicts in words: which trials were left out of the choice, and why."""
    out = table[table["left_out"] != ""]
    if not len(out):
        return "Every trial passed the guard (no flag, no divergence)." if len(table) else ""
    named = knobs or ["trial"]
    items = [f"{', '.join(f'{stats.words(k)} {value_text(row[k])}' for k in named)} ({row['left_out']})"
             for _, row in out.iterrows()]
    return f"Left out of the choice ({len(out)} of {len(table)}): " + "; ".join(items) + "."


def noise_count(table: pd.DataFrame, metric: str) -> float | None:
    """How many measurements a rate metric is a share of (its resolution is one over it): held-out pairs for
    pair accuracy, generation prompts for a win rate; None for other metrics."""
    column = ("eval_pairs" if metric == "eval_rewards_accuracies"
              else "gen_prompts" if metric.startswith("eval_win_rate_") else None)
    if column is None or column not in table or not table[column].notna().any():
        return None
    return float(table[column].median())


def closeness_column(table: pd.DataFrame) -> str | None:
    """How far a trial moved from the reference, for near ties: the sampled KL of its generations, else the
    held-out log-ratio."""
    for column in ("gen_kl", "eval_abs_logratio"):
        if column in table and pd.to_numeric(table[column], errors="coerce").notna().any():
            return column
    return None


def choose_sweet_spot(table: pd.DataFrame, metric: str, mode: str, knobs: list[str], why: pd.Series,
                      same_budget: bool, tie_se: float, tie_break: str = TIE_BREAK) -> SweetSpot | None:
    """The analysis' choice, in one place (the benchmark of selection rules calls it too): eligible cells only,
    flagged trials as cliffs beside their neighbours, near ties to the cell closest to the reference."""
    flagged = table["reward_hacking"] != "" if "reward_hacking" in table else None
    return robust_sweet_spot(table, metric, mode, knobs, exclude=why != "", same_budget=same_budget,
                                   cliffs=flagged, noise_n=noise_count(table, metric), tie_se=tie_se, tie_break=tie_break,
                                   closeness=closeness_column(table))


def analyze(records: list[TrialRecord], metric: str, mode: str, out_dir: Path,
            max_abs_logratio: float | None = None, cost: SweepCost | None = None,
            tie_se: float = TIE_SE, tie_break: str = TIE_BREAK, swept: list[str] | None = None) -> SweepAnalysis:
    """`swept`: the space's canonical keys (the sweep state's), which are the knobs; without them (a sweep from
    before they were recorded) the knobs are the table's varying columns that are not known results.

    Trials are compared at a common budget (`common_budget`): every eligible trial's values at the last
    report they all reached, so a trial that ran to the end is never weighed against stopped trials' earlier
    values. The best single trial (whose adapter to take) is still chosen by its last value."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = results_table(records, metric, mode)
    best = pick_best(final, metric, mode, max_abs_logratio) if len(final) else None
    why = left_out(final, max_abs_logratio)
    eligible = set(final.loc[(why == "") & final[metric].notna(), "trial"]) if len(final) else set()
    budget = common_budget(records, eligible)
    table = results_table(records, metric, mode, at_report=budget.report) if budget else final
    if len(table):
        table["left_out"] = why.to_numpy()
    table_path = out_dir / "results.csv"
    table.to_csv(table_path, index=False)

    knobs = stats.swept_knobs(table, metric, swept) if len(table) else []
    x, line = plots.axes_keys(knobs)
    anova = two_way_anova(table, metric, a=line, b=x) if x and line else None
    spot = (choose_sweet_spot(table, metric, mode, knobs, why, budget is not None, tie_se, tie_break) if knobs
            else None)
    advice = " ".join(part for part in (
        f"Trials {budget.describe}." if budget and knobs else "",
        recommendation(table, metric, mode, knobs, spot, anova) if knobs else "",
        guard_sentence(table, knobs) if knobs else "") if part)
    # Where the plots put the sweet spot: the chosen cell at its mean, else the best trial.
    marked = {**spot.values, metric: spot.mean} if spot else best
    return SweepAnalysis(
        table=table, metric=metric, mode=mode, best=best, knobs=knobs, sweet_spot=spot, anova=anova, budget=budget,
        sensitivity=sensitivity(table, metric, knobs) if knobs else [], recommendation=advice,
        findings=findings(table, sorted({k for r in records for k in r.params}), max_abs_logratio), cost=cost,
        plots=plots.draw_all(records, table, knobs, metric, marked, anova, out_dir), table_path=table_path,
        completions=completion_examples(records, table, best) if len(table) else [],
        compute=compute_of(records))


def compute_of(records: list[TrialRecord]) -> str:
    """The compute dtype and device the trials' figures came from ('bfloat16 on cuda'; several when mixed)."""
    seen = sorted({str(v) for r in records if "compute" in r.history for v in r.history["compute"].dropna()})
    return ", ".join(seen)
