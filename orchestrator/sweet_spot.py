"""The sweet spot: the best region of the grid rather than the luckiest cell (`robust_sweet_spot`: each cell
scored with its grid neighbours, flagged trials as cliffs, near ties within the held-out noise named), and
how sure it is (replicates' standard errors, bootstrap win rate, or the gap against the grid's spread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.records import COMPLETED, DIVERGED
from orchestrator.stats import better_sign, plain, sorted_levels, usable, where_text


@dataclass
class SweetSpot:
    metric: str
    mode: str
    values: dict[str, Any]  # knob -> value of the chosen cell
    mean: float  # mean over the cell's replicates
    score: float  # neighbourhood score: (2 x cell + neighbours) / (2 + number of neighbours)
    n: int  # replicates in the cell
    se: float | None  # standard error of the cell mean; None with one trial
    runner_up: dict[str, Any] | None
    runner_up_mean: float | None
    runner_up_score: float | None
    confidence: str
    win_rate: float | None  # share of bootstrap resamples of the replicates this cell wins; None without any
    cells: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)  # every cell: knobs, mean, n, score


SELF_WEIGHT = 2.0  # the cell counts twice as much as each neighbour
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 300, 0


def _neighbour_weights(keys: list[tuple], levels: list[list]) -> np.ndarray:
    """Row-normalised weights: SELF_WEIGHT on the cell, 1 on each cell one grid step away in one knob."""
    pos = np.array([[lv.index(v) for lv, v in zip(levels, key, strict=True)] for key in keys])
    steps = np.abs(pos[:, None, :] - pos[None, :, :])
    w = ((steps.sum(axis=2) == 1) & (steps.max(axis=2) == 1)).astype(float)
    np.fill_diagonal(w, SELF_WEIGHT)
    return w / w.sum(axis=1, keepdims=True)


def robust_sweet_spot(table: pd.DataFrame, metric: str, mode: str, knobs: list[str],
                      exclude: pd.Series | None = None, same_budget: bool = False, cliffs: pd.Series | None = None,
                      noise_n: float | None = None, tie_se: float = 0.0,
                      closeness: str | None = None, tie_break: str = "score") -> SweetSpot | None:
    """The cell whose neighbourhood is best, not the luckiest single cell; None when no trial is eligible.

    Cells are means over replicates. A cell whose trials all diverged counts, as a neighbour, as the worst
    cell of the grid (a cliff next door makes a cell risky); rows in `exclude` (e.g. drifted from the
    reference) are left out altogether. As in `analysis.pick_best`, only cells with a completed trial are
    candidates while any trial completed, and an ASHA-stopped trial counts only where its cell has no
    completed one (its last value is from earlier in training) - unless `same_budget`: the table holds every
    trial's values at one common report (`analysis.common_budget`), so every cell is a candidate.

    `cliffs`: rows that count as cliffs too (flagged trials: a collapse next door), where their cell has no other
    trial. Near ties: with `noise_n` (the count a rate metric is measured on, e.g. held-out pairs) and `tie_se` > 0,
    the candidates whose own mean is within tie_se binomial standard errors of its difference from the chosen
    cell's are a near tie, said in the confidence; with `tie_break` "closest" the tie goes to the cell closest to
    the reference (the lowest mean `closeness`, e.g. gen_kl), else the neighbourhood average keeps the pick.
    """
    sign = better_sign(mode)
    if not knobs or any(k not in table for k in knobs):
        raise ValueError(f"knobs: need one or more columns of the results table, got {knobs!r} "
                         f"(columns: {', '.join(map(str, table.columns))})")
    rows, _ = usable(table, metric)
    if exclude is not None:
        rows = rows[~exclude.eq(True).reindex(rows.index, fill_value=False)]
    rows = rows.dropna(subset=knobs)
    if not len(rows):
        return None
    done = (rows["status"] == COMPLETED if "status" in rows and not same_budget
            else pd.Series(True, index=rows.index))
    any_done = bool(done.any())
    values, candidate = {}, {}
    for key, g in rows.groupby(knobs):
        key = tuple(plain(k) for k in (key if isinstance(key, tuple) else (key,)))
        fin = done.loc[g.index]
        values[key] = g.loc[fin, metric].to_numpy() if fin.any() else g[metric].to_numpy()
        candidate[key] = bool(fin.any()) or not any_done
    if "status" in table:
        cliff_rows = table["status"] == DIVERGED
        if cliffs is not None:
            cliff_rows |= cliffs.eq(True).reindex(table.index, fill_value=False)
        for key, g in table[cliff_rows].dropna(subset=knobs).groupby(knobs):
            key = tuple(plain(k) for k in (key if isinstance(key, tuple) else (key,)))
            values.setdefault(key, None)  # a cliff: only where no trial of the cell survived
    keys = list(values)
    levels = [sorted_levels(table[k]) for k in knobs]
    w = _neighbour_weights(keys, levels)
    cliff = np.array([values[k] is None for k in keys])
    is_cand = np.array([candidate.get(k, False) for k in keys])

    def scores(means: np.ndarray) -> np.ndarray:  # means: (..., cells); cliffs filled with the worst cell
        worst = np.nanmin(means, axis=-1) if sign > 0 else np.nanmax(means, axis=-1)
        means = np.where(cliff, worst[..., None], means)
        return means @ w.T

    means = np.array([np.nan if v is None else v.mean() for v in (values[k] for k in keys)])
    score = scores(means)
    order = sorted(np.flatnonzero(is_cand), key=lambda i: (-sign * score[i], -sign * means[i]))
    tie_note = ""
    if noise_n and tie_se > 0 and len(order) > 1:
        # A tie: a candidate whose own mean is within tie_se standard errors of the difference from the chosen
        # cell's own mean (each a binomial rate on noise_n measurements per replicate). Judged on the cells' own
        # means, not the neighbourhood averages: on a coarse grid a weak cell's average rides on a strong
        # neighbour, and the least-moved of such "equals" would be a trial that barely learned.
        top = order[0]
        p = (float(means[top]) * noise_n + 2) / (noise_n + 4)  # Agresti-Coull: no zero SE at a rate of 1
        reps = {i: max(len(values[keys[i]]), 1) for i in order}
        gap_se = {i: math.sqrt(p * (1 - p) / noise_n * (1 / reps[top] + 1 / reps[i])) for i in order}
        tied = [i for i in order if sign * (means[top] - means[i]) <= tie_se * gap_se[i]]
        band = tie_se * max(gap_se[i] for i in tied) if len(tied) > 1 else 0.0
        if len(tied) > 1:
            others = "; ".join(f"{where_text(dict(zip(knobs, keys[i], strict=True)))} ({means[i]:.3g})"
                               for i in tied if i != top)
            noise = (f"{len(tied)} cells are within the held-out noise of the chosen cell's mean ({tie_se:g} SE of "
                     f"a difference on {noise_n:g} measurements, {band:.2g}): a near tie with {others}")
            close = (rows.groupby(knobs)[closeness].mean() if tie_break == "closest" and closeness in rows
                     else pd.Series(dtype=float))
            near = {i: float(close.get(keys[i] if len(knobs) > 1 else keys[i][0], math.nan)) for i in tied}
            if tie_break == "closest" and all(math.isfinite(v) for v in near.values()):
                pick = min(tied, key=lambda i: near[i])
                order = [pick] + [i for i in order if i != pick]
                tie_note = (f"{noise}, given to the one closest to the reference ({closeness} {near[pick]:.3g}, "
                            "against " + ", ".join(f"{near[i]:.3g}" for i in tied if i != pick) + ")")
            else:
                tie_note = (f"{noise}, kept by the best neighbourhood average; the metric cannot tell these cells "
                            "apart, so read their completions (the report's examples) or add held-out data")
    best, second = order[0], (order[1] if len(order) > 1 else None)
    n = len(values[keys[best]])
    se = float(values[keys[best]].std(ddof=1) / math.sqrt(n)) if n > 1 else None
    replicated = any(v is not None and len(v) > 1 for v in values.values())
    win_rate = None
    if replicated:  # resample each cell's replicates; how often does the chosen cell still win?
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        boot = np.column_stack([
            np.full(BOOTSTRAP_RESAMPLES, np.nan) if v is None
            else rng.choice(v, size=(BOOTSTRAP_RESAMPLES, len(v))).mean(axis=1)
            for v in (values[k] for k in keys)])
        s = np.where(is_cand, sign * scores(boot), -np.inf)
        win_rate = float((s.argmax(axis=1) == best).mean())
    spread = float(np.nanstd(means[~cliff], ddof=1)) if (~cliff).sum() > 1 else 0.0
    cells = pd.DataFrame([dict(zip(knobs, k, strict=True)) for k in keys])
    cells["mean"], cells["score"], cells["candidate"] = means, score, is_cand
    cells["n"] = [0 if values[k] is None else len(values[k]) for k in keys]
    up = dict(zip(knobs, keys[second], strict=True)) if second is not None else None
    return SweetSpot(
        metric=metric, mode=mode, values=dict(zip(knobs, keys[best], strict=True)), mean=float(means[best]),
        score=float(score[best]), n=n, se=se, runner_up=up,
        runner_up_mean=None if second is None else float(means[second]),
        runner_up_score=None if second is None else float(score[second]),
        confidence=(f"{tie_note}; runner-up {where_text(up)}, neighbourhood average {score[second]:.3g}" if tie_note
                    else _confidence(sign, means, score, best, second, up, n, se, replicated, spread, win_rate)),
        win_rate=win_rate, cells=cells)


def _confidence(sign: int, means: np.ndarray, score: np.ndarray, best: int, second: int | None,
                up: dict | None, n: int, se: float | None, replicated: bool, spread: float,
                win_rate: float | None) -> str:
    if second is None:
        return "only one eligible cell: nothing to compare it with"
    text = []
    if se is not None:
        lead = sign * (means[best] - means[second])
        text.append(f"{n} replicates in this cell: mean {means[best]:.3g} ± {se:.2g} (SE)")
        if lead < 0:
            verdict = f"has a better mean ({means[second]:.3g}) but weaker neighbours"
        elif lead <= se:
            verdict = f"has a mean ({means[second]:.3g}) within 1 SE: the two are not distinguishable"
        elif lead <= 2 * se:
            verdict = f"has a mean ({means[second]:.3g}) within 2 SE: a weak lead"
        else:
            verdict = f"has a mean ({means[second]:.3g}) more than 2 SE behind: a clear lead"
        text.append(f"the runner-up ({where_text(up)}) {verdict}")
    else:
        text.append("single trial per cell, no seeds: the confidence is from neighbours only" if not replicated
                    else "a single trial in this cell: the confidence is from neighbours only")
        gap = sign * (score[best] - score[second])
        if spread <= 0 or gap <= 0:  # every trial scored the same: no lead at all, whatever the ratio says
            text.append(f"neighbourhood average {score[best]:.3g}, the same as the runner-up's ({where_text(up)}): "
                        "the metric does not separate the trials, so this pick is arbitrary")
        else:
            ratio = gap / spread
            verdict = "a near tie" if ratio < 0.25 else ("a modest lead" if ratio < 1 else "a clear lead")
            text.append(f"neighbourhood average {score[best]:.3g} against {score[second]:.3g} for the runner-up "
                        f"({where_text(up)}); the gap is {ratio:.2g}x the spread of the metric across the grid "
                        f"(sd {spread:.2g}): {verdict}")
    if win_rate is not None:
        text.append(f"it wins {win_rate:.0%} of {BOOTSTRAP_RESAMPLES} bootstrap resamples of the replicates")
    return "; ".join(text)
