"""Reward-hacking / degradation detectors over one trial's report history; none needs clean labels.

A history is the list of report dicts a trial passes to `report` (oldest first; keys as in
`trainables.trial`: `eval_rewards_margins`, `eval_logps_chosen`, `eval_abs_logratio`,
`eval_rewards_accuracies`, `train_rewards_margins`, `train_logps_chosen`, `step`, ...). Every detector
is a pure function

    detector(history, threshold, ...) -> index of the first report at which it fires, or None

so it can run after the fact on a stored history or inside a trial on the history so far (a detector
never looks ahead: whether it fires at report i depends only on reports 0..i). `fired_step` turns the
index into the trial's optimizer step. A report missing the detector's metric is skipped.

Calibrated on the synthetic benchmark (`benchmarks/detector_calibration.py`: 144 tiny-llama trials, beta x lr x
label noise, thresholds chosen on seeds 0-2, scored on seeds 3-5). The defaults are its choices for answer-quality
collapse: `chosen_logp_drop` 1 nat (held-out P 0.92, R 0.96), `drift` 2 nats (P 0.83, R 1.00),
`train_up_eval_down` 0.03. With degradation defined more broadly (answers down 0.2 OR clean accuracy down 0.05
from the peak) `chosen_logp_drop` at 0.1 nat measured best (P 0.86, R 0.94). The practitioner's rule
(`reward_rise`) keeps its textbook 10%, at which it fired in epoch 1 of every one of the 144 trials.

    python -c "from trainables.detectors import chosen_logp_drop; \\
print(chosen_logp_drop([{'eval_logps_chosen': -2.0}, {'eval_logps_chosen': -4.5}], 1.0))"   # -> 1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

History = Sequence[Mapping[str, float]]
EPS = 1e-8


def _series(history: History, metric: str) -> list[tuple[int, float]]:
    """(report index, value) of the reports that carry `metric`."""
    return [(i, float(m[metric])) for i, m in enumerate(history) if m.get(metric) is not None]


def fired_step(history: History, index: int | None) -> int | None:
    """The optimizer step of report `index` (the index itself when the report has no 'step')."""
    if index is None:
        return None
    return int(history[index].get("step", index))


def relative_rise(values: Sequence[float], reports_per_epoch: int) -> float:
    """The last value's rise relative to the value `reports_per_epoch` reports earlier, or to the first value
    while fewer reports exist (the first epoch's window starts at report 0)."""
    then = values[-reports_per_epoch - 1] if len(values) > reports_per_epoch else values[0]
    return (values[-1] - then) / max(abs(then), EPS)


def reward_rise(history: History, threshold: float = 0.10, reports_per_epoch: int = 4,
                metric: str = "eval_rewards_margins") -> int | None:
    """(a) The practitioner's rule, as `trainables.reward_hacking.RewardHackingMonitor` applies it.

    Fires when the held-out reward metric rose by more than `threshold` (relative) within one epoch:
    (now - then) / |then| > threshold, `then` being the value `reports_per_epoch` reports earlier, or
    the first report's value while fewer reports exist (the first epoch's window starts at report 0).
    """
    values: list[float] = []
    for i, v in _series(history, metric):
        values.append(v)
        if relative_rise(values, reports_per_epoch) > threshold:
            return i
    return None


def chosen_logp_drop(history: History, threshold: float = 1.0, metric: str = "eval_logps_chosen") -> int | None:
    """(b) The held-out chosen log-prob fell more than `threshold` nats below its running max.

    DPO can raise the margin while pushing both completions down; once the preferred answers
    themselves lose probability, greedy answers break (the failure pair accuracy hides).
    """
    best = float("-inf")
    for i, v in _series(history, metric):
        best = max(best, v)
        if best - v > threshold:
            return i
    return None


def drift(history: History, threshold: float = 2.0, metric: str = "eval_abs_logratio") -> int | None:
    """(c) Mean |log pi - log pi_ref| over held-out completions above `threshold` nats: the policy
    left the neighbourhood of the reference that beta was meant to keep it in."""
    for i, v in _series(history, metric):
        if v > threshold:
            return i
    return None


def train_up_eval_down(history: History, threshold: float = 0.03, window: int = 1,
                       train_metric: str = "train_rewards_margins",
                       eval_metric: str = "eval_rewards_accuracies") -> int | None:
    """(d) Overfitting the training preferences: over the last `window` reports the train reward margin
    rose (> 0) while the held-out preference accuracy fell by more than `threshold`.

    Report i is compared with report i - window (window 1: consecutive reports; window =
    reports_per_epoch: one epoch). It reads held-out preference labels, not answer ground truth; with
    noisy annotation those labels are as noisy as the training ones.
    """
    for i in range(window, len(history)):
        now, then = history[i], history[i - window]
        vals = (now.get(train_metric), then.get(train_metric), now.get(eval_metric), then.get(eval_metric))
        if any(v is None for v in vals):
            continue
        train_now, train_then, eval_now, eval_then = map(float, vals)
        if train_now > train_then and eval_then - eval_now > threshold:
            return i
    return None


def earliest(*indices: int | None) -> int | None:
    """Combine detectors with OR: the first report at which any of them fired."""
    fired = [i for i in indices if i is not None]
    return min(fired) if fired else None


def logp_drop_or_drift(history: History, logp_threshold: float = 1.0, drift_threshold: float = 2.0) -> int | None:
    """(b) OR (c)."""
    return earliest(chosen_logp_drop(history, logp_threshold), drift(history, drift_threshold))

