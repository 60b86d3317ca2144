"""Every plot of a sweep, drawn one way: each `figure_*` builds a matplotlib Figure (or None when the
sweep has nothing to show there), `save` writes and closes it, and `draw_all` makes the set the analysis
ships. Tests read the Figures' axes; users get PNGs.

Axis rules, in one place (`_knob_axis`): a knob axis is labelled with the knob's name and drawn on a
log scale when its values are positive and span a decade or more (a learning-rate grid); a metric axis
is labelled with the metric. Only swept knobs are axes: a seed (the replicates of `num_samples`) never
is - replicates are averaged, or drawn as separate curves.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.anova import AnovaResult
from orchestrator.records import COMPLETED, TrialRecord
from orchestrator.stats import p_text, sorted_levels, usable, value_text


def log_like(values: pd.Series) -> bool:
    """Numeric, positive and spanning a decade or more: a learning rate (1e-4, 3e-4, 1e-3 is a geometric grid)."""
    v = pd.to_numeric(values, errors="coerce")
    return bool(v.notna().all() and len(v) and (v > 0).all() and v.max() / v.min() >= 10)


def _knob_axis(ax, values: pd.Series, name: str, which: str = "x") -> None:
    if log_like(values):
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    (ax.set_xlabel if which == "x" else ax.set_ylabel)(name)


def _figure(width: float, height: float, **kw):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(**kw)


def save(fig, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def axes_keys(knobs: list[str]) -> tuple[str | None, str | None]:
    """(x, line) of the interaction plot: learning_rate across, one line per beta, when swept."""
    x = "learning_rate" if "learning_rate" in knobs else (knobs[0] if knobs else None)
    rest = [k for k in knobs if k != x]
    line = "beta" if "beta" in rest else (rest[0] if rest else None)
    return x, line


def figure_interaction(table: pd.DataFrame, knobs: list[str], metric: str, marked: dict | None):
    """The metric against the learning rate, one line per beta (means over replicates); grey rings: stopped
    early; red crosses: flagged; a star: the sweet spot. None without a swept knob."""
    x, line = axes_keys(knobs)
    if x is None or not pd.to_numeric(table[metric], errors="coerce").notna().any():
        return None  # no trial reported the metric: nothing to draw (and an empty log axis cannot be laid out)
    fig, ax = _figure(7, 4.5)
    groups = table.groupby(line) if line else [(None, table)]
    for value, g in groups:
        agg = g.groupby(x)[metric].mean().sort_index()
        ax.plot(agg.index, agg.values, marker="o", label=f"{line}={value_text(value)}" if line else metric)
        stopped = g[g["status"] != COMPLETED]
        ax.scatter(stopped[x], stopped[metric], s=90, facecolors="none", edgecolors="grey", zorder=3)
        hacked = g[g["reward_hacking"] != ""]
        ax.scatter(hacked[x], hacked[metric], marker="x", s=70, color="red", zorder=4)
    if marked:
        ax.scatter([marked[x]], [marked[metric]], marker="*", s=260, color="gold", edgecolors="black", zorder=5,
                   label="sweet spot")
    _knob_axis(ax, table[x], x)
    ax.set_ylabel(f"{metric} ({_budget_words(table)})")
    ax.set_title(f"{metric} vs {x}" + (f", one line per {line}" if line else "")
                 + "\n(grey ring: stopped early; red x: reward-hacking flag)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def figure_heatmap(table: pd.DataFrame, knobs: list[str], metric: str, marked: dict | None):
    """The metric over the grid of the two main knobs (means over replicates); None with fewer than two."""
    x, y = axes_keys(knobs)
    if not (x and y):
        return None
    grid = table.pivot_table(index=y, columns=x, values=metric, aggfunc="mean").sort_index().sort_index(axis=1)
    fig, ax = _figure(6.5, 4.5)
    im = ax.imshow(grid.values, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(grid.shape[1]), [value_text(v) for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [value_text(v) for v in grid.index])
    for i, yv in enumerate(grid.index):
        for j, xv in enumerate(grid.columns):
            v = grid.values[i, j]
            cell = table[(table[y] == yv) & (table[x] == xv)]
            mark = " (stopped)" if len(cell) and (cell["status"] != COMPLETED).all() else ""
            mark += " !" if (cell["reward_hacking"] != "").any() else ""
            ax.text(j, i, ("-" if math.isnan(v) else f"{v:.3f}") + mark + _health_text(cell), ha="center",
                    va="center", fontsize=8, color="white")
    if marked:
        from matplotlib.patches import Rectangle

        j, i = list(grid.columns).index(marked[x]), list(grid.index).index(marked[y])
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3.5))
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{metric} ({_budget_words(table)}), {y} x {x}\nred box: sweet spot; !: flagged; kl: sampled KL "
                 "from the reference,\nnll: NLL rise of the generations under the reference (nats/token)", fontsize=8)
    fig.colorbar(im, ax=ax)
    return fig


def _budget_words(table: pd.DataFrame) -> str:
    """'report 2', the common budget of the table's values, or 'last report'."""
    if "compared_report" in table and table["compared_report"].notna().any():
        return f"report {int(table['compared_report'].dropna().iloc[0])}"
    return "last report"


def _health_text(cell: pd.DataFrame) -> str:
    """The cell's health beside its metric: the mean sampled KL from the reference per token (the health rule's
    main part) and the rise of the reference's NLL of its generations."""
    parts = []
    for column, text in (("gen_kl_per_token", "kl {:.2f}/tok"), ("gen_nll_rise", "nll {:+.2f}")):
        values = pd.to_numeric(cell[column], errors="coerce") if column in cell else pd.Series(dtype=float)
        if values.notna().any():
            parts.append(text.format(values.mean()))
    return "\n" + ", ".join(parts) if parts else ""


def figure_frontier(table: pd.DataFrame, knobs: list[str], metric: str, marked: dict | None):
    """The over-optimisation frontier: each trial's metric against its sampled KL from the reference (gen_kl),
    at the compared budget. Blue: healthy; red x: flagged (never the sweet spot); a star: the sweet spot's
    trials. None when no trial has both."""
    if "gen_kl" not in table:
        return None
    # As floats: a column holding None beside numbers is object dtype, and the legend's placement cannot read it.
    x, y = pd.to_numeric(table["gen_kl"], errors="coerce"), pd.to_numeric(table[metric], errors="coerce")
    keep = x.notna() & y.notna()
    rows, x, y = table[keep], x[keep].astype(float), y[keep].astype(float)
    if not len(rows):
        return None
    fig, ax = _figure(6.5, 4.5)
    flagged = rows["reward_hacking"] != ""
    ax.scatter(x[~flagged], y[~flagged], s=40, color="tab:blue", label="healthy")
    ax.scatter(x[flagged], y[flagged], marker="x", s=60, color="red", label="flagged (left out)")
    for i, r in rows.iterrows():
        ax.annotate(",".join(value_text(r[k]) for k in knobs), (x[i], y[i]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    if marked and knobs and all(k in marked for k in knobs):
        spot = np.logical_and.reduce([rows[k] == marked[k] for k in knobs])
        ax.scatter(x[spot], y[spot], marker="*", s=260, color="gold", edgecolors="black", zorder=5,
                   label="sweet spot")
    if (x > 0).all() and x.max() / max(x.min(), 1e-12) >= 30:
        ax.set_xscale("log")
    ax.set_xlabel("sampled KL(policy || reference) per completion, nats (gen_kl)")
    ax.set_ylabel(f"{metric} ({_budget_words(table)})")
    ax.set_title(f"{metric} against the distance travelled from the reference\n(labels: "
                 f"{', '.join(knobs) or 'trial'})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def figure_learning_curves(records: list[TrialRecord], metric: str):
    fig, ax = _figure(7, 4.5)
    for r in records:
        if metric not in r.history or not len(r.history):
            continue
        style = "-" if r.status == COMPLETED else "--"
        color = "red" if r.flagged else None
        label = ",".join(f"{k}={value_text(v)}" for k, v in sorted(r.params.items())) or r.trial_id
        ax.plot(r.history["step"], r.history[metric], style, marker=".", color=color, label=label, alpha=0.85)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title("learning curves (dashed: stopped early; red: reward-hacking flag)", fontsize=10)
    if ax.lines:
        ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def _mean_se(rows: pd.DataFrame, metric: str, by: str) -> pd.DataFrame:
    g = rows.groupby(by)[metric]
    out = pd.DataFrame({"mean": g.mean(), "se": g.std(ddof=1) / np.sqrt(g.size()), "n": g.size()})
    return out.sort_index()


def _varying(rows: pd.DataFrame, knobs: list[str]) -> list[str]:
    return [k for k in knobs if k in rows and rows[k].nunique() > 1]


def figure_main_effects(table: pd.DataFrame, metric: str, knobs: list[str]):
    """One panel per varying knob: mean ± SE of the metric at each of its values; None when none varies."""
    rows, _ = usable(table, metric)
    knobs = _varying(rows, knobs)
    if not knobs:
        return None
    fig, axes = _figure(3.6 * len(knobs), 3.6, nrows=1, ncols=len(knobs), sharey=True, squeeze=False)
    for ax, k in zip(axes[0], knobs, strict=True):
        m = _mean_se(rows, metric, k)
        ax.errorbar(m.index, m["mean"], yerr=m["se"].fillna(0), marker="o", capsize=3)
        _knob_axis(ax, rows[k], k)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} (mean ± SE)")
    fig.suptitle(f"main effects on {metric}", fontsize=10)
    return fig


def figure_interaction_means(table: pd.DataFrame, metric: str, a: str, b: str, anova: AnovaResult | None = None):
    """Mean ± SE of the metric against `b`, one line per value of `a`; None unless both vary."""
    rows, _ = usable(table, metric)
    if len(_varying(rows, [a, b])) < 2:
        return None
    fig, ax = _figure(6.5, 4.3)
    for value, g in rows.groupby(a):
        m = _mean_se(g, metric, b)
        ax.errorbar(m.index, m["mean"], yerr=m["se"].fillna(0), marker="o", capsize=3,
                    label=f"{a}={value_text(value)}")
    _knob_axis(ax, rows[b], b)
    ax.set_ylabel(metric)
    title = f"{metric}: mean ± SE vs {b}, one line per {a}"
    if anova is not None and anova.interaction is not None:
        title += f"\n{a} x {b} interaction {p_text(anova.interaction.p)} ({anova.method})"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _unit(values: pd.Series) -> pd.Series:
    """Values mapped to [0, 1] on their axis: log scale for learning-rate-like knobs, ranks for text."""
    if not pd.api.types.is_numeric_dtype(values):
        levels = sorted_levels(values)
        return values.map({v: i / max(len(levels) - 1, 1) for i, v in enumerate(levels)})
    v = np.log10(values.astype(float)) if log_like(values) else values.astype(float)
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else v * 0 + 0.5


def figure_parallel_coordinates(table: pd.DataFrame, metric: str, knobs: list[str]):
    """Each trial a line across the knob axes and the metric, coloured by the metric; only with > 2 knobs varying."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    rows, _ = usable(table, metric)
    knobs = _varying(rows, knobs)
    if len(knobs) <= 2:
        return None
    axes_names = [*knobs, metric]
    unit = pd.DataFrame({k: _unit(rows[k]) for k in axes_names})
    norm = Normalize(rows[metric].min(), rows[metric].max())
    cmap = colormaps["viridis"]
    fig, ax = _figure(2.0 * len(axes_names) + 1.5, 4.5)
    xs = np.arange(len(axes_names))
    for i, y in unit.iterrows():
        ax.plot(xs, y.to_numpy(), color=cmap(norm(rows.at[i, metric])), alpha=0.7, linewidth=1.2)
    for x, k in zip(xs, axes_names, strict=True):
        ax.axvline(x, color="black", linewidth=0.8)
        shown = rows[k].drop_duplicates().sort_values()
        for i, value in (shown if len(shown) <= 8 else shown.iloc[[0, -1]]).items():
            text = f"{value:.3g}" if k == metric else value_text(value)
            ax.text(x + 0.03, unit.at[i, k], text, fontsize=7, va="center")
    ax.set_xticks(xs, axes_names, fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes_names) - 0.6)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    ax.set_title(f"{len(rows)} trials across {len(knobs)} knobs, coloured by {metric}", fontsize=9)
    return fig


def draw_all(records: list[TrialRecord], table: pd.DataFrame, knobs: list[str], metric: str, marked: dict | None,
             anova: AnovaResult | None, out_dir: Path) -> dict[str, Path]:
    """Every plot the sweep has something to show in, saved as out_dir/<name>.png: {name: path}."""
    figures: dict[str, Any] = {}
    if knobs and len(table):
        x, line = axes_keys(knobs)
        figures["interaction"] = figure_interaction(table, knobs, metric, marked)
        figures["heatmap"] = figure_heatmap(table, knobs, metric, marked)
        figures["frontier"] = figure_frontier(table, knobs, metric, marked)
        figures["main_effects"] = figure_main_effects(table, metric, knobs)
        figures["parallel_coordinates"] = figure_parallel_coordinates(table, metric, knobs)
        if anova is not None and anova.replicates[1] > 1 and line:  # with seeds: error bars and the p-value
            figures["interaction_means"] = figure_interaction_means(table, metric, line, x, anova=anova)
    figures["learning_curves"] = figure_learning_curves(records, metric)
    return {name: save(fig, out_dir / f"{name}.png") for name, fig in figures.items() if fig is not None}
