"""A sweep's trials as plain records: what each trial was given, reported and how it ended.

Built from Ray's results (`records_from_results`), or by hand in tests; everything downstream (the
statistics, the plots, the analysis, MLflow's sync) reads records and the results table, never Ray.

A step Ray holds twice - a trial restarted from a checkpoint older than its last result - keeps its
first value, as MLflow does (a trial's run logs each step once): the two always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from trainables.params import canonical_params, trial_spec

COMPLETED, STOPPED, FAILED, STOPPED_HACKING = "completed", "stopped_early", "failed", "stopped_reward_hacking"
DIVERGED, OUT_OF_MEMORY = "diverged", "out_of_memory"
# How an out-of-memory trial's error reads: ours (trainables.trial), torch's, or Ray's memory monitor killing it.
OOM_MARKERS = ("TrialOutOfMemory", "OutOfMemoryError", "CUDA out of memory")
# Metrics the results table shows beside the ranked one.
EXTRA_RESULT_METRICS = ("eval_rewards_accuracies", "answer_exact_rate", "answer_length_tokens", "eval_logps_chosen",
                        "eval_abs_logratio", "eval_loss", "gen_truncation_rate", "gen_length_ratio",
                        "gen_repeat_ngram_rate", "gen_ref_nll_per_token", "gen_kl", "gen_kl_per_token", "eval_pairs",
                        "gen_prompts")
# Bookkeeping columns of the results table: with the metrics, what is not a knob. gen_nll_rise: a part of the health
# rule (trainables.health), how much less plausible the reference finds the policy's completions than its own.
BOOKKEEPING = frozenset({"trial", "status", "reports", "steps", "seconds", "reward_hacking", "reward_hacking_detail",
                         "gen_nll_rise", "compared_report", "left_out"})


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
        return _last_text(self.history, "reward_hack_signal") or "flagged"

    @property
    def flag_detail(self) -> str:
        """What the flagging signal saw, in words ('' when no trial flag or no words)."""
        return _last_text(self.history, "reward_hack_detail") if self.flagged else ""

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
        return self.at(metric)

    def at(self, metric: str, index: int | None = None) -> float:
        """The metric at report `index` (0-based; None: the last report; -1 past the trial's end: NaN)."""
        if metric not in self.history or not len(self.history) or index == -1:
            return math.nan
        value = self.history[metric].iloc[-1 if index is None else index]
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.nan

    def best(self, metric: str, mode: str) -> float:
        """The metric at its best report: the largest for mode 'max', the smallest for 'min'."""
        if metric not in self.history or not len(self.history):
            return math.nan
        return float(self.history[metric].max() if mode == "max" else self.history[metric].min())


def results_table(records: list[TrialRecord], metric: str, mode: str = "max", at_report: int | None = None,
                  ) -> pd.DataFrame:
    """One row per trial: its knobs, status, the metric at its last report and at its best (by `mode`), and
    the other metrics shown beside it.

    `at_report`: read every metric at that report (1-based) instead of the last: the common budget at which the
    analysis compares trials that a scheduler stopped at different points. A trial with fewer reports gets NaN
    there (it never reached that budget); `final_<metric>` keeps its last value either way."""
    rows = []
    for r in records:
        at = None if at_report is None else (at_report - 1 if r.reports >= at_report else -1)
        row = {"trial": r.trial_id, **r.params, "status": r.status, "reports": r.reports,
               "steps": r.last("step"), "seconds": r.last("time_total_s"),  # what it ran, in Ray's training time
               metric: r.at(metric, at), f"best_{metric}": r.best(metric, mode)}
        if at_report is not None:
            row[f"final_{metric}"], row["compared_report"] = r.last(metric), at_report
        for extra in EXTRA_RESULT_METRICS:
            if extra in r.history and extra != metric:
                row[extra] = r.at(extra, at)
        row["gen_nll_rise"] = r.at("gen_ref_nll_per_token", at) - r.at("ref_gen_ref_nll_per_token", at)
        row["reward_hacking"] = r.flag_signal  # which signal flagged it, '' for none
        row["reward_hacking_detail"] = r.flag_detail
        rows.append(row)
    return pd.DataFrame(rows)


def not_knobs(metric: str) -> set[str]:
    """Columns of a results table that are neither knobs nor replicates."""
    return {*BOOKKEEPING, *EXTRA_RESULT_METRICS, metric, f"best_{metric}", f"final_{metric}"}


def _last_text(history: pd.DataFrame, column: str) -> str:
    """The last non-empty text of a column ('' when none; a report before the flag carries '')."""
    if column not in history:
        return ""
    named = [str(v) for v in history[column].dropna() if str(v)]
    return named[-1] if named else ""


def unique_steps(history: pd.DataFrame) -> pd.DataFrame:
    """A trial's reports in step order, each step once (its first report, as in MLflow)."""
    if "step" not in history or not len(history):
        return history
    return history.drop_duplicates("step", keep="first").sort_values("step").reset_index(drop=True)


def expected_reports(base_spec: dict[str, Any], params: dict[str, Any]) -> int:
    spec = trial_spec(base_spec, params)
    return spec.dpo.reports_per_epoch * spec.dpo.num_train_epochs


def _history(result) -> pd.DataFrame:
    """A trial's reports. Ray reads them from result.json, which a trial paused and resumed on another worker
    (synchronous halving does that at every rung) can restart, losing the reports before the pause;
    progress.csv keeps them all, so it is read too and the fuller of the two is used."""
    import io

    df = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
    fs = getattr(result, "filesystem", None)
    if fs is None or not getattr(result, "path", None):
        return df
    try:
        with fs.open_input_stream(f"{result.path}/progress.csv") as f:
            csv = pd.read_csv(io.StringIO(f.readall().decode()), dtype={"trial_id": str})
    except (OSError, pd.errors.EmptyDataError):
        return df  # no progress.csv (nothing reported yet): result.json is all there is

    def steps(d: pd.DataFrame) -> int:
        return d["step"].nunique() if "step" in d else len(d)

    if steps(csv) <= steps(df):
        return df
    # Ray's CSV header is the first report's keys: a key that appears later (a flag's signal and words) is in
    # result.json only; it joins the fuller CSV by step.
    later = [c for c in df.columns if c not in csv.columns]
    if later and "step" in df and "step" in csv:
        csv = csv.merge(unique_steps(df)[["step", *later]], on="step", how="left")
    return csv


def records_from_results(grid, base_spec: dict[str, Any], metric: str, mode: str) -> list[TrialRecord]:
    """One record per trial of a Ray `ResultGrid`."""
    records = []
    for result in grid:
        df = _history(result)
        params = canonical_params(dict(result.config or {}))  # sweeps from before keys were made canonical
        best = None
        scored = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
        if scored:
            sign = 1 if mode == "max" else -1
            best = max(scored, key=lambda cm: sign * cm[1][metric])[0].path
        records.append(TrialRecord(
            trial_id=Path(result.path).name, params=params, history=unique_steps(df),
            expected_reports=expected_reports(base_spec, params),
            error=str(result.error) if result.error else None, best_checkpoint=best,
        ))
    return records


def load_results(experiment_path: str):
    """Ray's results of a sweep, read from its directory: no cluster, nothing re-run."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    return ResultGrid(ExperimentAnalysis(experiment_path))
