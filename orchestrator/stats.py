"""Helpers the statistics share (`orchestrator.anova`, `orchestrator.sweet_spot`,
`orchestrator.recommendation`): the rows that count, knob names and values in words, which columns are
knobs. They work on the results table of `orchestrator.records.results_table` (one row per trial; trials
with the same knob values are replicates, e.g. the grid repeated with other seeds).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from orchestrator.eligibility import NOT_TRAINED
from orchestrator.records import not_knobs


def words(name: str) -> str:
    """`dpo.learning_rate` -> `learning rate`, for sentences."""
    return name.split(".")[-1].replace("_", " ")


def value_text(x: Any) -> str:
    """A knob value as the user typed it (0.0005, 5e-05, 3)."""
    return f"{x:g}" if isinstance(x, (float, np.floating)) else str(x)


def p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def plain(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def where_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{words(k)} {value_text(v)}" for k, v in values.items())


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
    levels = [plain(v) for v in values.dropna().unique()]
    try:
        return sorted(levels)
    except TypeError:  # mixed types: order by text
        return sorted(levels, key=str)


def better_sign(mode: str) -> int:
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
