"""Which trials may be chosen or promoted, in one place: the schedulers (a Ray result at a rung), the analysis
(the sweet spot, the best trial) and the statistics (ANOVA, sensitivity) all ask here.

- `NOT_TRAINED`: statuses whose figures say nothing about the knobs - a failed trial, one that ran out of
  memory, one that diverged. They never feed the ANOVA or the sensitivity, are never picked, never promoted.
- `left_out`: why a trial of the results table may not be the sweet spot or the best trial: not trained as
  above, flagged (the reward-hacking flag, by default the generations' health rule), or further from the
  reference than analysis.max_abs_logratio.
- `eligible`: the same rule for a Ray result at a rung (halving and ASHA promote by it).
"""

from __future__ import annotations

import math

import pandas as pd

from orchestrator.records import DIVERGED, FAILED, OUT_OF_MEMORY

NOT_TRAINED = (FAILED, OUT_OF_MEMORY, DIVERGED)


def eligible(result: dict, metric: str, max_abs_logratio: float | None) -> bool:
    """Whether a trial may be promoted at a rung: a finite metric, no reward-hacking flag (by default the
    generations' health rule, trainables.health) and no further from the reference than
    analysis.max_abs_logratio - the rules by which the analysis leaves a trial out of the sweet spot."""
    value = result.get(metric)
    if value is None or not math.isfinite(value) or result.get("reward_hack_flag"):
        return False
    drift = result.get("eval_abs_logratio")
    return max_abs_logratio is None or drift is None or drift <= max_abs_logratio


def drifted(table: pd.DataFrame, max_abs_logratio: float | None) -> pd.Series:
    """Trials whose policy ended further than `max_abs_logratio` nats from the reference."""
    if max_abs_logratio is None or "eval_abs_logratio" not in table:
        return pd.Series(False, index=table.index)
    return table["eval_abs_logratio"] > max_abs_logratio


def left_out(table: pd.DataFrame, max_abs_logratio: float | None) -> pd.Series:
    """Why each trial may not be the sweet spot ('' where it may): it did not train (`NOT_TRAINED`), it was flagged (the
    reward-hacking flag, by default the generations' health rule: the same rule halving and ASHA promote by), or
    it drifted beyond analysis.max_abs_logratio."""
    why = pd.Series("", index=table.index, dtype=object)
    if not len(table):
        return why
    flagged = table["reward_hacking"] != ""
    detail = table["reward_hacking_detail"] if "reward_hacking_detail" in table else pd.Series("", index=table.index)
    why[flagged] = ("flagged by " + table["reward_hacking"] + (": " + detail).where(detail != "", ""))[flagged]
    if max_abs_logratio is not None:
        why[drifted(table, max_abs_logratio)] = f"more than {max_abs_logratio:g} nats from the reference"
    not_trained = table["status"].isin(NOT_TRAINED)
    why[not_trained] = table["status"][not_trained].str.replace("_", " ")
    return why
