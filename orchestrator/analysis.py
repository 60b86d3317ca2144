"""The end of every sweep: results table, sweet spot, interaction plot, heatmap, learning curves.

Works on plain `TrialRecord`s (built from Ray's results), so it can be re-run on a finished
sweep without training anything. Plots are PNGs; the table is CSV.

Ranking: a trial's score is its metric at its last report. Only trials that ran to the end are
ranked for the sweet spot while any did: an ASHA-stopped trial's last value is from an earlier
point in training and is not comparable. Ties go to the smaller drift from the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

COMPLETED, STOPPED, FAILED, STOPPED_HACKING = "completed", "stopped_by_asha", "failed", "stopped_reward_hacking"
DIVERGED, OUT_OF_MEMORY = "diverged", "out_of_memory"
# How an out-of-memory trial's error reads: ours (trainables.trial), torch's, or Ray's memory monitor killing it.
OOM_MARKERS = ("TrialOutOfMemory", "OutOfMemoryError", "CUDA out of memory")


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    history: pd.DataFrame  # one row per report
    expected_reports: int
    error: str | None = None
    best_checkpoint: str | None = None

    @property
    def reports(self) -> int:
        return len(self.history)

    @property
    def flagged(self) -> bool:
        return bool(len(self.history) and "reward_hack_flag" in self.history
                    and self.history["reward_hack_flag"].fillna(0).max() > 0)

    @property
    def flag_signal(self) -> str:
        """The signal that flagged the trial ('' when none did)."""
        if not self.flagged:
            return ""
        if "reward_hack_signal" in self.history:
            named = self.history["reward_hack_signal"].dropna()
            if len(named):
                return str(named.iloc[-1])
        return "flagged"

    @property
    def status(self) -> str:
        if self.error:
            return OUT_OF_MEMORY if any(m in self.error for m in OOM_MARKERS) else FAILED
        if "diverged" in self.history and self.history["diverged"].fillna(0).max() > 0:
            return DIVERGED
        if self.reports >= self.expected_reports:
            return COMPLETED
        if self.flagged and "reward_hack_stop" in self.history and self.history["reward_hack_stop"].max() > 0:
            return STOPPED_HACKING
        return STOPPED

    def last(self, metric: str) -> float:
        if metric not in self.history or not len(self.history):
            return math.nan
        return float(self.history[metric].iloc[-1])


@dataclass
class SweepAnalysis:
    table: pd.DataFrame
    metric: str
    mode: str
    best: dict[str, Any] | None  # the best single trial (its adapter is the one to take)
    summary: str
    plots: dict[str, Path] = field(default_factory=dict)
    table_path: Path | None = None
    knobs: list[str] = field(default_factory=list)
    sweet_spot: Any = None  # stats.SweetSpot: the best region, not the luckiest cell
    anova: Any = None  # stats.AnovaResult of the metric on beta x learning_rate (or the two knobs swept)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    recommendation: str = ""
    reports: list[Path] = field(default_factory=list)  # report.html, report.md once written


def results_table(records: list[TrialRecord], metric: str, mode: str = "max") -> pd.DataFrame:
    """One row per trial: its knobs, status, the metric at its last report and at its best (max or min by
    `mode`), and the other metrics shown beside it."""
    from orchestrator.stats import EXTRA_RESULT_METRICS  # stats imports this module: import at call time

    rows = []
    for r in records:
        row = {"trial": r.trial_id, **r.params, "status": r.status, "reports": r.reports,
               metric: r.last(metric), f"best_{metric}": (float(getattr(r.history[metric], mode)())
                                                         if metric in r.history and len(r.history) else math.nan)}
        for extra in EXTRA_RESULT_METRICS:
            if extra in r.history and extra != metric:
                row[extra] = r.last(extra)
        row["reward_hacking"] = r.flag_signal  # which signal flagged it, '' for none
        rows.append(row)
    return pd.DataFrame(rows)


def drifted(table: pd.DataFrame, max_abs_logratio: float | None) -> pd.Series:
    """Trials whose policy ended further than `max_abs_logratio` nats from the reference."""
    if max_abs_logratio is None or "eval_abs_logratio" not in table:
        return pd.Series(False, index=table.index)
    return table["eval_abs_logratio"] > max_abs_logratio


def pick_best(table: pd.DataFrame, metric: str, mode: str, max_abs_logratio: float | None = None) -> dict | None:
    ranked = table[table[metric].notna() & ~drifted(table, max_abs_logratio) & (table["status"] != DIVERGED)]
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


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _axes_keys(params: list[str]) -> tuple[str | None, str | None]:
    """(x, line) keys of the interaction plot: learning_rate across, one line per beta, when swept."""
    x = "learning_rate" if "learning_rate" in params else (params[0] if params else None)
    rest = [p for p in params if p != x]
    line = "beta" if "beta" in rest else (rest[0] if rest else None)
    return x, line


def plot_interaction(table: pd.DataFrame, params: list[str], metric: str, best: dict | None, path: Path) -> Path:
    import matplotlib.pyplot as plt

    x, line = _axes_keys(params)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = table.groupby(line) if line else [(None, table)]
    for value, g in groups:
        agg = g.groupby(x)[metric].mean().sort_index()
        ax.plot(agg.index, agg.values, marker="o", label=f"{line}={_fmt(value)}" if line else metric)
        stopped = g[g["status"] != COMPLETED]
        ax.scatter(stopped[x], stopped[metric], s=90, facecolors="none", edgecolors="grey", zorder=3)
        hacked = g[g["reward_hacking"] != ""]
        ax.scatter(hacked[x], hacked[metric], marker="x", s=70, color="red", zorder=4)
    if best:
        ax.scatter([best[x]], [best[metric]], marker="*", s=260, color="gold", edgecolors="black", zorder=5,
                   label="sweet spot")
    from orchestrator.stats import log_like  # stats imports this module: import at call time

    if log_like(table[x]):
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(f"{metric} (last report)")
    ax.set_title(f"{metric} vs {x}" + (f", one line per {line}" if line else "")
                 + "\n(grey ring: stopped early; red x: reward-hacking flag)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_heatmap(table: pd.DataFrame, params: list[str], metric: str, best: dict | None, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    x, y = _axes_keys(params)
    if not (x and y):
        return None
    grid = table.pivot_table(index=y, columns=x, values=metric, aggfunc="mean").sort_index().sort_index(axis=1)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    im = ax.imshow(grid.values, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(grid.shape[1]), [_fmt(v) for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [_fmt(v) for v in grid.index])
    for i, yv in enumerate(grid.index):
        for j, xv in enumerate(grid.columns):
            v = grid.values[i, j]
            cell = table[(table[y] == yv) & (table[x] == xv)]
            mark = " (stopped)" if len(cell) and (cell["status"] != COMPLETED).all() else ""
            mark += " !" if (cell["reward_hacking"] != "").any() else ""
            ax.text(j, i, ("-" if math.isnan(v) else f"{v:.3f}") + mark, ha="center", va="center", fontsize=8,
                    color="white")
    if best:
        j, i = list(grid.columns).index(best[x]), list(grid.index).index(best[y])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3.5))
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{metric} (last report), {y} x {x}\nred box: sweet spot; !: reward-hacking flag", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curves(records: list[TrialRecord], metric: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in records:
        if metric not in r.history or not len(r.history):
            continue
        style = "-" if r.status == COMPLETED else "--"
        color = "red" if r.flagged else None
        label = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(r.params.items())) or r.trial_id
        ax.plot(r.history["step"], r.history[metric], style, marker=".", color=color, label=label, alpha=0.85)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title("learning curves (dashed: stopped early; red: reward-hacking flag)", fontsize=10)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def analyze(records: list[TrialRecord], metric: str, mode: str, out_dir: Path,
            max_abs_logratio: float | None = None) -> SweepAnalysis:
    import matplotlib

    from orchestrator import stats

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    table = results_table(records, metric, mode)
    params = sorted({k for r in records for k in r.params})
    best = pick_best(table, metric, mode, max_abs_logratio)
    table_path = out_dir / "results.csv"
    table.to_csv(table_path, index=False)

    knobs = stats.swept_knobs(table, metric) if len(table) else []
    x, line = _axes_keys(knobs)
    anova = stats.two_way_anova(table, metric, a=line, b=x) if x and line else None
    ineligible = (drifted(table, max_abs_logratio) | (table["status"] == DIVERGED)) if len(table) else None
    spot = stats.robust_sweet_spot(table, metric, mode, knobs, exclude=ineligible) if knobs else None
    sensitivity = stats.sensitivity(table, metric, knobs) if knobs else []
    advice = stats.recommendation(table, metric, mode, knobs, spot, anova) if knobs else ""
    # Where the plots put the sweet spot (knobs that did not vary keep their one value).
    marked = {**{p: table[p].iloc[0] for p in params}, **spot.values, metric: spot.mean} if spot else best

    plots: dict[str, Path] = {}
    if params and len(table):
        plots["interaction"] = plot_interaction(table, params, metric, marked, out_dir / "interaction.png")
        heat = plot_heatmap(table, params, metric, marked, out_dir / "heatmap.png")
        if heat:
            plots["heatmap"] = heat
        extra = {
            "main_effects": stats.plot_main_effects(table, metric, knobs, out_dir / "main_effects.png"),
            "parallel_coordinates": stats.plot_parallel_coordinates(table, metric, knobs,
                                                                    out_dir / "parallel_coordinates.png"),
        }
        if anova is not None and anova.replicates[1] > 1:  # with seeds: means with error bars and the p-value
            extra["interaction_means"] = stats.plot_interaction_means(table, metric, line, x,
                                                                      out_dir / "interaction_means.png", anova=anova)
        plots.update({k: v for k, v in extra.items() if v})
    plots["learning_curves"] = plot_learning_curves(records, metric, out_dir / "learning_curves.png")

    counts = table["status"].value_counts().to_dict() if len(table) else {}
    lines = [f"{len(table)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    if spot:
        lines.append(f"Sweet spot: {', '.join(f'{k}={_fmt(v)}' for k, v in spot.values.items())} -> {metric} "
                     f"{spot.mean:.4f} (neighbourhood average {spot.score:.4f}, {spot.n} trial(s) in the cell)")
    elif best:
        where = ", ".join(f"{k}={_fmt(best[k])}" for k in params)
        lines.append(f"Sweet spot: {where} -> {metric} {best[metric]:.4f} (trial {best['trial']})")
    else:
        lines.append(f"No trial reported {metric}: no sweet spot.")
    if best and spot:
        where = ", ".join(f"{k}={_fmt(best[k])}" for k in params)
        lines.append(f"Best single trial: {where} -> {metric} {best[metric]:.4f} (trial {best['trial']}; its "
                     "adapter is the run's best_adapter)")
    if advice:
        lines.append(f"Recommendation: {advice}")
    if anova is not None:
        lines.append(anova.describe())
    if len(sensitivity) > 1:
        lines.append(f"Knobs by influence on {metric} (eta^2): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in sensitivity))

    def names(rows: pd.DataFrame) -> str:
        return "; ".join(",".join(f"{k}={_fmt(row[k])}" for k in params) for _, row in rows.iterrows())

    if len(table):
        diverged = table[table["status"] == DIVERGED]
        if len(diverged):
            lines.append(f"Diverged (a NaN or Inf loss or metric; stopped and left out): {names(diverged)}")
        oom = table[table["status"] == OUT_OF_MEMORY]
        if len(oom):
            lines.append(f"Out of memory: {names(oom)}. Lower dpo.per_device_train_batch_size (raise "
                         "dpo.gradient_accumulation_steps to keep the effective batch) or dpo.max_length, or give "
                         "each trial more memory (resources.gpu_per_trial; fewer trials at once)")
        far = table[drifted(table, max_abs_logratio)]
        if len(far):
            lines.append(f"Left out of the sweet spot, policy more than {max_abs_logratio:g} nats from the reference "
                         f"(mean |log pi - log pi_ref| on held-out completions): {names(far)}")
        flagged = table[table["reward_hacking"] != ""]
        if len(flagged):
            by = ", ".join(f"{sig} {n}" for sig, n in flagged["reward_hacking"].value_counts().items())
            lines.append(f"Reward-hacking flag on {len(flagged)}/{len(table)} trial(s) (by signal: {by}): "
                         f"{names(flagged)}")
    return SweepAnalysis(table=table, metric=metric, mode=mode, best=best, summary="\n".join(lines), plots=plots,
                         table_path=table_path, knobs=knobs, sweet_spot=spot, anova=anova, sensitivity=sensitivity,
                         recommendation=advice)
