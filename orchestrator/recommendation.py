"""The recommendation: a few sentences a user can act on - what to use, how sure, what to avoid, whether to
tune beta and the learning rate together, when to add seeds - every statement derived from the table.
"""

from __future__ import annotations

import pandas as pd

from orchestrator.anova import AnovaResult
from orchestrator.records import DIVERGED
from orchestrator.stats import better_sign, p_text, sorted_levels, usable, value_text, where_text, words
from orchestrator.sweet_spot import SweetSpot


def _tail(levels: list, chosen: list) -> str:
    """'at or above 0.005' / 'at or below 1e-05' when `chosen` is one end of the sorted levels, else a list."""
    k = len(chosen)
    if k and levels[-k:] == chosen and k < len(levels):
        return f"at or above {value_text(chosen[0])}"
    if k and levels[:k] == chosen and k < len(levels):
        return f"at or below {value_text(chosen[-1])}"
    return ", ".join(value_text(c) for c in chosen)


def _degraded(table: pd.DataFrame, column: str, mode: str, knobs: list[str], degrade: bool) -> list[str]:
    """Sentences: knob values at which `column` was much worse than the best cell at every other setting.

    'Much worse' is read off the data: further from the best cell than half-way to the worst cell, and only
    when best and worst differ materially (by more than a tenth of the larger of the two in size).
    """
    sign = better_sign(mode)
    rows, _ = usable(table, column)
    rows = rows.dropna(subset=knobs)
    if not len(rows):
        return []
    cells = rows.groupby(knobs)[column].mean().reset_index()
    best = cells[column].max() if sign > 0 else cells[column].min()
    worst = cells[column].min() if sign > 0 else cells[column].max()
    spread = abs(best - worst)
    if spread == 0 or spread <= 0.1 * max(abs(best), abs(worst)):
        return []
    cells["bad"] = sign * (best - cells[column]) > spread / 2
    out = []
    for k in knobs:
        others = [o for o in knobs if o != k and rows[o].nunique() > 1]
        levels = sorted_levels(rows[k])
        bad = [v for v in levels
               if (sub := cells[cells[k] == v])["bad"].all() and (len(sub) >= 2 or not others)]
        if not bad or len(bad) == len(levels):
            continue
        hit = cells[cells[k].isin(bad)][column]
        every = f" at every {', '.join(words(o) for o in others)} tried" if others else ""
        fell = f"{hit.min():.3g}" if f"{hit.min():.3g}" == f"{hit.max():.3g}" else f"{hit.min():.3g}-{hit.max():.3g}"
        what = f"degraded {words(column)}" if degrade else f"left {words(column)} much worse"
        out.append(f"{words(k).capitalize()} {_tail(levels, bad)} {what}{every} "
                   f"({'it fell to ' if degrade else ''}{fell}, against {best:.3g} at best).")
    return out


def _diverged(table: pd.DataFrame, knobs: list[str]) -> list[str]:
    if "status" not in table:
        return []
    out = []
    for k in knobs:
        levels = sorted_levels(table[k])
        gone = [v for v in levels if (table.loc[table[k] == v, "status"] == DIVERGED).all()]
        if gone and len(gone) < len(levels):
            out.append(f"{words(k).capitalize()} {_tail(levels, gone)} diverged in every trial.")
    return out


def recommendation(table: pd.DataFrame, metric: str, mode: str, knobs: list[str], sweet_spot: SweetSpot | None,
                   anova: AnovaResult | None = None, degrade_column: str = "answer_exact_rate",
                   degrade_mode: str = "max") -> str:
    """A few sentences a user can act on: what to use, how sure, what to avoid, whether to tune jointly.

    Degradation is judged on `degrade_column` (where higher is better for "max") when the table has it,
    else on the metric itself.
    """
    if sweet_spot is None:
        return f"No eligible trial has a finite {metric}: no recommendation."
    seeds = f"{sweet_spot.n} seeds" if sweet_spot.n > 1 else "one trial"
    text = [(f"Use {where_text(sweet_spot.values)}: {words(metric)} {sweet_spot.mean:.3g} "
             f"(neighbourhood average {sweet_spot.score:.3g}, {seeds})."),
            sweet_spot.confidence[0].upper() + sweet_spot.confidence[1:] + "."]
    has_degrade = degrade_column in table and pd.to_numeric(table[degrade_column], errors="coerce").notna().any()
    column, cmode = (degrade_column, degrade_mode) if has_degrade else (metric, mode)
    text += _diverged(table, knobs) + _degraded(table, column, cmode, knobs, degrade=has_degrade)
    if anova is not None:
        a, b, t = words(anova.a), words(anova.b), anova.interaction
        if anova.method is None or t is None:
            text.append(f"The {a} x {b} interaction could not be tested ({anova.reason}).")
        elif t.p < 0.05:
            strength = "strong" if t.p < 0.01 else "present"
            text.append(f"The {a} x {b} interaction is {strength} ({p_text(t.p)}, partial eta^2 "
                        f"{t.partial_eta_sq:.2g}): tune {b} per {a}.")
        else:
            text.append(f"No evidence of a {a} x {b} interaction ({p_text(t.p)}): the best {b} does not "
                        f"clearly depend on {a}.")
    if sweet_spot.n == 1:
        text.append("Repeat the best few cells with 2-3 seeds to tell them apart.")
    return " ".join(text)
