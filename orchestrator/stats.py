"""The statistics behind a sweep's answer: which beta and learning rate to use, and why.

Works on the results table of `orchestrator.records.results_table` (one row per trial; trials with the
same knob values are replicates, e.g. the grid repeated with other seeds):

    .venv/bin/python -c "import pandas as pd; from orchestrator import stats
    t = pd.read_csv('results.csv'); print(stats.two_way_anova(t, 'eval_rewards_accuracies').describe())"

- `two_way_anova`: does the metric depend on beta, on the learning rate, and on the two together? A full
  two-way ANOVA when cells have replicates; Tukey's one-degree-of-freedom test for non-additivity when the
  grid has one trial per cell (then interaction and noise cannot be told apart otherwise).
- `sensitivity`: which knobs move the metric most.
- `robust_sweet_spot`: the best region rather than the luckiest cell (each cell scored with its neighbours).
- `recommendation`: a few sentences a user can act on, every statement derived from the table.
- `swept_knobs`: which columns are knobs (seeds are replicates, never knobs).

Failed and diverged trials are left out everywhere (their metric is missing or meaningless).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.eligibility import NOT_TRAINED
from orchestrator.records import COMPLETED, DIVERGED, not_knobs

FULL_ANOVA = "two-way ANOVA"  # Type II sums of squares, with interaction; needs replicates
TUKEY = "Tukey one-df test"  # one trial per cell: Tukey's test for non-additivity
ADDITIVE = "additive two-way ANOVA"  # one trial per cell and missing cells: main effects only


# ---------------------------------------------------------------------------------------------- helpers

def _words(name: str) -> str:
    """`dpo.learning_rate` -> `learning rate`, for sentences."""
    return name.split(".")[-1].replace("_", " ")


def value_text(x: Any) -> str:
    """A knob value as the user typed it (0.0005, 5e-05, 3)."""
    return f"{x:g}" if isinstance(x, (float, np.floating)) else str(x)


def p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def _plain(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def _where(values: dict[str, Any]) -> str:
    return ", ".join(f"{_words(k)} {value_text(v)}" for k, v in values.items())


def usable(table: pd.DataFrame, column: str) -> tuple[pd.DataFrame, int]:
    """Rows with a finite `column` of trials that trained (`eligibility.NOT_TRAINED`), and how many were left out."""
    if column not in table:
        return table.iloc[:0], len(table)
    values = pd.to_numeric(table[column], errors="coerce")
    keep = np.isfinite(values)
    if "status" in table:
        keep &= ~table["status"].isin(NOT_TRAINED)
    rows = table[keep].copy()
    rows[column] = values[keep].astype(float)
    return rows, int(len(table) - len(rows))


def sorted_levels(values: pd.Series) -> list:
    levels = [_plain(v) for v in values.dropna().unique()]
    try:
        return sorted(levels)
    except TypeError:  # mixed types: order by text
        return sorted(levels, key=str)


def _better(mode: str) -> int:
    if mode not in ("max", "min"):
        raise ValueError(f"mode: must be 'max' or 'min', got {mode!r}")
    return 1 if mode == "max" else -1


def swept_knobs(table: pd.DataFrame, metric: str, swept: list[str] | None = None) -> list[str]:
    """The knobs of a results table with more than one value (seed columns are replicates): the swept keys
    when known, else the columns that are not known results."""
    if swept is not None:
        return [k for k in swept if k in table.columns and not is_seed(k) and table[k].nunique() > 1]
    skip = not_knobs(metric)
    return [c for c in table.columns
            if c not in skip and not is_seed(c) and not c.startswith("best_") and table[c].nunique() > 1]


def is_seed(column: str) -> bool:
    """A seed column ('seed', 'dpo.seed', 'data.synthetic.seed'): its values are replicates, not a knob."""
    return column.split(".")[-1] == "seed" or column.endswith("_seed")


# ---------------------------------------------------------------------------------------------- ANOVA

@dataclass
class AnovaTerm:
    name: str
    f: float
    p: float
    df: float
    partial_eta_sq: float  # SS_term / (SS_term + SS_error): the share of the unexplained variation it explains


@dataclass
class AnovaResult:
    metric: str
    a: str
    b: str
    method: str | None  # FULL_ANOVA, TUKEY, ADDITIVE, or None when nothing could be estimated
    terms: dict[str, AnovaTerm] = field(default_factory=dict)  # keys: a, b, and f"{a} x {b}"
    df_error: float | None = None
    n_used: int = 0
    n_left_out: int = 0  # failed, out of memory, diverged, or no finite metric
    replicates: tuple[int, int] = (0, 0)  # fewest and most trials in a cell
    reason: str | None = None  # why not estimated (method None), or why the interaction was not testable

    @property
    def interaction(self) -> AnovaTerm | None:
        return self.terms.get(f"{self.a} x {self.b}")

    def describe(self) -> str:
        a, b = _words(self.a), _words(self.b)
        left = f"; {self.n_left_out} trial(s) left out (failed, out of memory, diverged or no {self.metric})" if self.n_left_out else ""
        if self.method is None:
            return f"{a} x {b} interaction: not estimated — {self.reason}{left}"
        lo, hi = self.replicates
        design = (f"{lo} replicates per cell" if lo == hi else f"{lo}-{hi} replicates per cell") if hi > 1 \
            else "one trial per cell"
        t = self.interaction
        if t is None:
            mains = ", ".join(f"{_words(k)} F={m.f:.3g}, {p_text(m.p)}" for k, m in self.terms.items())
            return f"{a} x {b} interaction: not testable ({self.reason}); main effects: {mains} ({self.method}){left}"
        verdict = (f"the best {b} depends on {a}" if t.p < 0.05
                   else f"no evidence that the best {b} depends on {a}")
        return (f"{a} x {b} interaction: F={t.f:.3g}, {p_text(t.p)}, partial eta^2={t.partial_eta_sq:.2g} "
                f"({self.method} with {design}) — {verdict}{left}")


def _term(name: str, ss: float, df: float, ss_err: float, df_err: float) -> AnovaTerm:
    from scipy import stats as st

    ms_err = ss_err / df_err
    f = (ss / df) / ms_err if ms_err > 0 else (math.inf if ss > 0 else math.nan)
    p = float(st.f.sf(f, df, df_err)) if math.isfinite(f) else (0.0 if f == math.inf else math.nan)
    eta = ss / (ss + ss_err) if ss + ss_err > 0 else math.nan
    return AnovaTerm(name=name, f=float(f), p=p, df=float(df), partial_eta_sq=float(eta))


def _type2(d: pd.DataFrame, a: str, b: str, interaction: bool) -> tuple[dict[str, AnovaTerm], float]:
    """Type II ANOVA as nested OLS comparisons: SS(a|b), SS(b|a), SS(a x b|a, b).

    The same numbers as `anova_lm(fit, typ=2)` on a complete grid; unlike it, right when some cells are
    empty (a failed trial), because each fit's residual df counts the design's rank.
    """
    from statsmodels.formula.api import ols

    with warnings.catch_warnings():  # an empty cell makes the interaction design rank-deficient: expected
        warnings.simplefilter("ignore")
        fit = {f: ols(f"y ~ {f}", d).fit() for f in ("C(A)", "C(B)", "C(A) + C(B)", "C(A) * C(B)")}
    add, full = fit["C(A) + C(B)"], fit["C(A) * C(B)"]
    err = full if interaction else add
    ss_err, df_err = float(err.ssr), float(err.df_resid)
    terms = {a: _term(a, fit["C(B)"].ssr - add.ssr, fit["C(B)"].df_resid - add.df_resid, ss_err, df_err),
             b: _term(b, fit["C(A)"].ssr - add.ssr, fit["C(A)"].df_resid - add.df_resid, ss_err, df_err)}
    if interaction:
        terms[f"{a} x {b}"] = _term(f"{a} x {b}", add.ssr - full.ssr, add.df_resid - full.df_resid, ss_err, df_err)
    return terms, df_err


def _tukey(grid: np.ndarray, a: str, b: str) -> tuple[dict[str, AnovaTerm], float]:
    """Tukey's one-degree-of-freedom test for non-additivity on a complete grid, one value per cell.

    With row effects r_i and column effects c_j, SS_N = (sum y_ij r_i c_j)^2 / (sum r_i^2 sum c_j^2) is the
    part of the additive model's residual that a multiplicative r_i * c_j term explains; it is tested against
    what is left, on (rows-1)(cols-1) - 1 df. Main effects are tested against the same remainder.
    """
    rows, cols = grid.shape
    mu = grid.mean()
    r, c = grid.mean(axis=1) - mu, grid.mean(axis=0) - mu
    ss_a, ss_b = cols * float((r**2).sum()), rows * float((c**2).sum())
    resid = grid - mu - r[:, None] - c[None, :]
    denom = float((r**2).sum() * (c**2).sum())
    ss_n = float((grid * np.outer(r, c)).sum()) ** 2 / denom if denom > 0 else 0.0
    df_err = (rows - 1) * (cols - 1) - 1
    ss_err = max(float((resid**2).sum()) - ss_n, 0.0)
    terms = {a: _term(a, ss_a, rows - 1, ss_err, df_err), b: _term(b, ss_b, cols - 1, ss_err, df_err),
             f"{a} x {b}": _term(f"{a} x {b}", ss_n, 1, ss_err, df_err)}
    return terms, float(df_err)


def two_way_anova(table: pd.DataFrame, metric: str, a: str = "beta", b: str = "learning_rate") -> AnovaResult:
    """Effects of knobs `a`, `b` and of a x b on `metric`, the knob values taken as categorical levels.

    Never raises for data that cannot support the test: returns `method=None` with the reason.
    """
    out = AnovaResult(metric=metric, a=a, b=b, method=None)
    missing = [c for c in (metric, a, b) if c not in table]
    if missing:
        out.reason = f"the results table has no column {', '.join(missing)}"
        return out
    rows, _ = usable(table, metric)
    rows = rows[rows[a].notna() & rows[b].notna()]
    out.n_left_out, out.n_used = len(table) - len(rows), len(rows)
    if len(rows) < 3:
        out.reason = f"only {len(rows)} trial(s) with a finite {metric} (need at least 3)"
        return out
    for k in (a, b):
        if rows[k].nunique() < 2:
            out.reason = f"only one value of {_words(k)} ({value_text(_plain(rows[k].iloc[0]))}) among the usable trials"
            return out
    d = pd.DataFrame({"y": rows[metric].to_numpy(), "A": rows[a].astype(str).to_numpy(),
                      "B": rows[b].astype(str).to_numpy()})
    counts = d.groupby(["A", "B"]).size()
    n_a, n_b, n_cells = d["A"].nunique(), d["B"].nunique(), len(counts)
    out.replicates = (int(counts.min()), int(counts.max()))
    complete = n_cells == n_a * n_b
    # Replicates give an error term apart from the interaction; ask for 2 df of it at least.
    if counts.max() >= 2 and len(d) - n_cells >= 2:
        out.method = FULL_ANOVA
        out.terms, out.df_error = _type2(d, a, b, interaction=True)
    elif complete and (n_a - 1) * (n_b - 1) >= 2:
        out.method = TUKEY  # on the cell means when a few cells have a second trial but too few to count
        grid = d.pivot_table(index="A", columns="B", values="y", aggfunc="mean").to_numpy()
        out.terms, out.df_error = _tukey(grid, a, b)
    elif len(d) - (n_a + n_b - 1) >= 1:
        out.method = ADDITIVE
        out.reason = ("one trial per cell and an incomplete grid" if not complete
                      else f"a {n_a}x{n_b} grid with one trial per cell leaves no df for it")
        out.terms, out.df_error = _type2(d, a, b, interaction=False)
    else:
        out.reason = f"{len(d)} trials are too few to separate {_words(a)}, {_words(b)} and noise"
    return out


# ---------------------------------------------------------------------------------------------- sensitivity

def sensitivity(table: pd.DataFrame, metric: str, knobs: list[str]) -> list[tuple[str, float]]:
    """Knobs ranked by eta-squared of a one-way grouping on each (share of the metric's variance between
    the knob's values), largest first. Knobs with one value, or not in the table, are left out."""
    rows, _ = usable(table, metric)
    y = rows[metric] if len(rows) else pd.Series(dtype=float)
    ss_total = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0
    scores = []
    for k in knobs:
        if k not in rows or rows[k].nunique() < 2:
            continue
        g = rows.groupby(k)[metric]
        ss_between = float((g.size() * (g.mean() - y.mean()) ** 2).sum())
        scores.append((k, ss_between / ss_total if ss_total > 0 else 0.0))
    return sorted(scores, key=lambda s: -s[1])


# ---------------------------------------------------------------------------------------------- sweet spot

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
    sign = _better(mode)
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
        key = tuple(_plain(k) for k in (key if isinstance(key, tuple) else (key,)))
        fin = done.loc[g.index]
        values[key] = g.loc[fin, metric].to_numpy() if fin.any() else g[metric].to_numpy()
        candidate[key] = bool(fin.any()) or not any_done
    if "status" in table:
        cliff_rows = table["status"] == DIVERGED
        if cliffs is not None:
            cliff_rows |= cliffs.eq(True).reindex(table.index, fill_value=False)
        for key, g in table[cliff_rows].dropna(subset=knobs).groupby(knobs):
            key = tuple(_plain(k) for k in (key if isinstance(key, tuple) else (key,)))
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
            others = "; ".join(f"{_where(dict(zip(knobs, keys[i], strict=True)))} ({means[i]:.3g})"
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
        confidence=(f"{tie_note}; runner-up {_where(up)}, neighbourhood average {score[second]:.3g}" if tie_note
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
        text.append(f"the runner-up ({_where(up)}) {verdict}")
    else:
        text.append("single trial per cell, no seeds: the confidence is from neighbours only" if not replicated
                    else "a single trial in this cell: the confidence is from neighbours only")
        gap = sign * (score[best] - score[second])
        if spread <= 0 or gap <= 0:  # every trial scored the same: no lead at all, whatever the ratio says
            text.append(f"neighbourhood average {score[best]:.3g}, the same as the runner-up's ({_where(up)}): "
                        "the metric does not separate the trials, so this pick is arbitrary")
        else:
            ratio = gap / spread
            verdict = "a near tie" if ratio < 0.25 else ("a modest lead" if ratio < 1 else "a clear lead")
            text.append(f"neighbourhood average {score[best]:.3g} against {score[second]:.3g} for the runner-up "
                        f"({_where(up)}); the gap is {ratio:.2g}x the spread of the metric across the grid "
                        f"(sd {spread:.2g}): {verdict}")
    if win_rate is not None:
        text.append(f"it wins {win_rate:.0%} of {BOOTSTRAP_RESAMPLES} bootstrap resamples of the replicates")
    return "; ".join(text)


# ---------------------------------------------------------------------------------------------- recommendation

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
    sign = _better(mode)
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
        every = f" at every {', '.join(_words(o) for o in others)} tried" if others else ""
        fell = f"{hit.min():.3g}" if f"{hit.min():.3g}" == f"{hit.max():.3g}" else f"{hit.min():.3g}-{hit.max():.3g}"
        what = f"degraded {_words(column)}" if degrade else f"left {_words(column)} much worse"
        out.append(f"{_words(k).capitalize()} {_tail(levels, bad)} {what}{every} "
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
            out.append(f"{_words(k).capitalize()} {_tail(levels, gone)} diverged in every trial.")
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
    text = [(f"Use {_where(sweet_spot.values)}: {_words(metric)} {sweet_spot.mean:.3g} "
             f"(neighbourhood average {sweet_spot.score:.3g}, {seeds})."),
            sweet_spot.confidence[0].upper() + sweet_spot.confidence[1:] + "."]
    has_degrade = degrade_column in table and pd.to_numeric(table[degrade_column], errors="coerce").notna().any()
    column, cmode = (degrade_column, degrade_mode) if has_degrade else (metric, mode)
    text += _diverged(table, knobs) + _degraded(table, column, cmode, knobs, degrade=has_degrade)
    if anova is not None:
        a, b, t = _words(anova.a), _words(anova.b), anova.interaction
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
