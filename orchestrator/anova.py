"""Does the metric depend on beta, on the learning rate, and on the two together; and which knobs move it most.

- `two_way_anova`: a full two-way ANOVA (Type II sums of squares) when cells have replicates; Tukey's
  one-degree-of-freedom test for non-additivity when the grid has one trial per cell (then interaction and
  noise cannot be told apart otherwise); main effects only with one trial per cell and missing cells.
- `sensitivity`: the knobs ranked by the share of the metric's variation each explains (eta^2).

Trials that did not train (`orchestrator.eligibility.NOT_TRAINED`) are left out.

    .venv/bin/python -c "import pandas as pd; from orchestrator.anova import two_way_anova
    t = pd.read_csv('results.csv'); print(two_way_anova(t, 'eval_rewards_accuracies').describe())"
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from orchestrator.stats import p_text, plain, usable, value_text, words

FULL_ANOVA = "two-way ANOVA"  # Type II sums of squares, with interaction; needs replicates
TUKEY = "Tukey one-df test"  # one trial per cell: Tukey's test for non-additivity
ADDITIVE = "additive two-way ANOVA"  # one trial per cell and missing cells: main effects only



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
        a, b = words(self.a), words(self.b)
        left = f"; {self.n_left_out} trial(s) left out (failed, out of memory, diverged or no {self.metric})" if self.n_left_out else ""
        if self.method is None:
            return f"{a} x {b} interaction: not estimated — {self.reason}{left}"
        lo, hi = self.replicates
        design = (f"{lo} replicates per cell" if lo == hi else f"{lo}-{hi} replicates per cell") if hi > 1 \
            else "one trial per cell"
        t = self.interaction
        if t is None:
            mains = ", ".join(f"{words(k)} F={m.f:.3g}, {p_text(m.p)}" for k, m in self.terms.items())
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
            out.reason = f"only one value of {words(k)} ({value_text(plain(rows[k].iloc[0]))}) among the usable trials"
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
        out.reason = f"{len(d)} trials are too few to separate {words(a)}, {words(b)} and noise"
    return out



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
