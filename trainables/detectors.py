"""Reward-hacking / degradation signals over one trial's report history.

A history is the list of report dicts a trial passes to `report` (oldest first; keys as in
`trainables.trial`). Every detector is a pure function

    detector(history, threshold, ...) -> index of the first report at which it fires, or None

so it runs after the fact on a stored history or inside a trial on the history so far (a detector never
looks ahead: whether it fires at report i depends only on reports 0..i). `fired_step` turns the index into
the trial's optimizer step. A report missing the detector's metric is skipped.

Two families. The reference-relative signals compare the policy with the reference model itself, so they
need no running peak, see a collapse that happened before the first report, and (per token) mean the same on
a 5-token answer and a 300-token one:

    chosen_displacement  held-out chosen completions lost more than t nats per token against the reference
    drift_per_token      mean |log pi - log pi_ref| per token on held-out completions above t
    length_drift         greedy probe answers' length moved more than t (relative) from the reference's
    answer_drop          greedy probe answers (exact or valid rate) fell t below their peak, the reference's
                         answers included; needs a task with known answers, and is the benchmark's ground truth

The older signals read TRL's summed log-probs or reward metrics against their own history:

    chosen_logp_drop     held-out chosen log-prob (a sum over the completion) t nats below its running peak
    drift                mean |log pi - log pi_ref| per completion (a sum) above t
    train_up_eval_down   train reward margin up while held-out pair accuracy fell more than t
    reward_rise          the practitioner's rule: a held-out reward metric up more than t (relative) in an epoch

`benchmarks/detector_calibration.py` scores all of them on two tasks; docs/benchmarks.md has its table.

    python -c "from trainables.detectors import chosen_displacement; \\
print(chosen_displacement([{'eval_chosen_logratio_per_token': -0.1}, {'eval_chosen_logratio_per_token': -0.9}], 0.5))"
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from trainables import health

History = Sequence[Mapping[str, float]]
EPS = 1e-8
REFERENCE_PREFIX = "ref_"  # trainables.trial: the reference model's probe answers, in every report


def _series(history: History, metric: str) -> list[tuple[int, float]]:
    """(report index, value) of the reports that carry `metric`."""
    return [(i, float(m[metric])) for i, m in enumerate(history) if m.get(metric) is not None]


def _first(history: History, metric: str, fires: Callable[[float], bool]) -> int | None:
    return next((i for i, v in _series(history, metric) if fires(v)), None)


def fired_step(history: History, index: int | None) -> int | None:
    """The optimizer step of report `index` (the index itself when the report has no 'step')."""
    if index is None:
        return None
    return int(history[index].get("step", index))


# ----------------------------------------------------------------------------------- reference-relative


def chosen_displacement(history: History, threshold: float,
                        metric: str = "eval_chosen_logratio_per_token") -> int | None:
    """Held-out chosen completions lost more than `threshold` nats per token against the reference model.

    Healthy DPO lowers them too ("likelihood displacement": the margin grows while both completions fall),
    by a fraction of a nat per token; a policy whose preferred answers fell by nats per token no longer
    says them. Misses a policy that breaks elsewhere while keeping these completions likely (generated
    text it was never shown), and one that degrades by raising the rejected answers instead.
    """
    return _first(history, metric, lambda v: v < -threshold)


def drift_per_token(history: History, threshold: float,
                    metric: str = "eval_abs_logratio_per_token") -> int | None:
    """Mean |log pi - log pi_ref| per token over held-out completions (chosen and rejected) above `threshold`.

    Catches a policy that left the reference's neighbourhood in either direction. Misses nothing that moves
    the held-out completions, but a strong, healthy policy also moves them: it cannot tell learning from
    breaking, only how far the policy went.
    """
    return _first(history, metric, lambda v: v > threshold)


def length_drift(history: History, threshold: float, metric: str = "answer_length_tokens") -> int | None:
    """Greedy answers to the probes became longer or shorter than the reference model's by more than
    `threshold` of its length (0.5: half as long again, or half as short).

    Catches length exploitation (the policy rambles to the generation cap) and a policy that stops at
    once. Needs probe prompts (the bundled tasks); misses degradation that keeps the length.
    """
    for i, v in _series(history, metric):
        ref = history[i].get(REFERENCE_PREFIX + metric)
        if ref is not None and abs(v - ref) > threshold * max(float(ref), 1.0):
            return i
    return None


def answer_drop(history: History, threshold: float,
                metrics: Sequence[str] = ("answer_exact_rate", "answer_valid_rate")) -> int | None:
    """The probe answers' exact (or valid) rate fell `threshold` or more below its peak, the peak starting at
    the reference model's rate. Needs probes with known answers; it is what the calibration calls degraded."""
    best: dict[str, float] = {}
    for i, m in enumerate(history):
        for metric in metrics:
            if m.get(metric) is None:
                continue
            peak = max(best.get(metric, float("-inf")), float(m.get(REFERENCE_PREFIX + metric, float("-inf"))),
                       float(m[metric]))
            best[metric] = peak
            # 1e-9: 0.2 of 40 probes is not a whole count in floats; keep '>=' exact.
            if peak - float(m[metric]) >= threshold - 1e-9:
                return i
    return None


# ------------------------------------------------------------------------------------- history-relative


def relative_rise(values: Sequence[float], reports_per_epoch: int) -> float:
    """The last value's rise relative to the value `reports_per_epoch` reports earlier, or to the first value
    while fewer reports exist (the first epoch's window starts at report 0)."""
    then = values[-reports_per_epoch - 1] if len(values) > reports_per_epoch else values[0]
    return (values[-1] - then) / max(abs(then), EPS)


def reward_rise(history: History, threshold: float = 0.10, reports_per_epoch: int = 4,
                metric: str = "eval_rewards_margins") -> int | None:
    """The practitioner's rule: the held-out reward metric rose by more than `threshold` (relative) within
    one epoch, (now - then) / |then|, `then` being the value `reports_per_epoch` reports earlier (or the
    first report's while fewer exist). Fires on nearly every trial that learns anything."""
    values: list[float] = []
    for i, v in _series(history, metric):
        values.append(v)
        if relative_rise(values, reports_per_epoch) > threshold:
            return i
    return None


def chosen_logp_drop(history: History, threshold: float = 1.0, metric: str = "eval_logps_chosen") -> int | None:
    """The held-out chosen log-prob (TRL's sum over the completion) fell more than `threshold` nats below its
    running max. Scales with completion length: on long completions healthy likelihood displacement alone
    moves the sum by nats."""
    best = float("-inf")
    for i, v in _series(history, metric):
        best = max(best, v)
        if best - v > threshold:
            return i
    return None


def drift(history: History, threshold: float = 2.0, metric: str = "eval_abs_logratio") -> int | None:
    """Mean |log pi - log pi_ref| per held-out completion (a sum over its tokens) above `threshold` nats."""
    return _first(history, metric, lambda v: v > threshold)


def train_up_eval_down(history: History, threshold: float = 0.03, window: int = 1,
                       train_metric: str = "train_rewards_margins",
                       eval_metric: str = "eval_rewards_accuracies") -> int | None:
    """Overfitting the training preferences: over the last `window` reports the train reward margin rose
    (> 0) while the held-out preference accuracy fell by more than `threshold`. It reads held-out preference
    labels, which with noisy annotation are as noisy as the training ones."""
    for i in range(window, len(history)):
        now, then = history[i], history[i - window]
        vals = (now.get(train_metric), then.get(train_metric), now.get(eval_metric), then.get(eval_metric))
        if any(v is None for v in vals):
            continue
        train_now, train_then, eval_now, eval_then = map(float, vals)
        if train_now > train_then and eval_then - eval_now > threshold:
            return i
    return None


# ------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Signal:
    """A detector with the words a flag prints: `describe(history, index, threshold)`."""

    detect: Callable[[History, float], int | None]
    describe: Callable[[History, int, float], str]
    needs_probes: bool = False


def _describe_length(h: History, i: int, t: float) -> str:
    now, ref = h[i]["answer_length_tokens"], h[i][REFERENCE_PREFIX + "answer_length_tokens"]
    return f"greedy answers are {now:.1f} tokens long against the reference's {ref:.1f} (threshold {t:g} of it)"


def _describe_answers(h: History, i: int, t: float) -> str:
    now = h[i]
    return (f"probe answers fell {t:g} or more below their peak: exact {now.get('answer_exact_rate', 0):.2f} "
            f"(reference {now.get(REFERENCE_PREFIX + 'answer_exact_rate', float('nan')):.2f}), valid "
            f"{now.get('answer_valid_rate', 0):.2f} (reference {now.get(REFERENCE_PREFIX + 'answer_valid_rate', float('nan')):.2f})")


def _describe_peak_drop(h: History, i: int, t: float) -> str:
    peak = max(m["eval_logps_chosen"] for m in h[: i + 1] if "eval_logps_chosen" in m)
    return f"held-out chosen log-prob fell {peak - h[i]['eval_logps_chosen']:.2f} nats below its peak (threshold {t:g})"


def _describe_train_up(h: History, i: int, t: float) -> str:
    fall = h[i - 1]["eval_rewards_accuracies"] - h[i]["eval_rewards_accuracies"]
    return f"train reward margin rose while held-out accuracy fell {fall:.3f} (threshold {t:g})"


# reward_rise is not here: it also needs the epoch length and the watched metric (trainables.reward_hacking).
SIGNALS: dict[str, Signal] = {
    "chosen_displacement": Signal(chosen_displacement, lambda h, i, t: (
        f"held-out chosen completions fell {-h[i]['eval_chosen_logratio_per_token']:.2f} nats/token below the "
        f"reference (threshold {t:g})")),
    "drift_per_token": Signal(drift_per_token, lambda h, i, t: (
        f"mean |log pi - log pi_ref| reached {h[i]['eval_abs_logratio_per_token']:.2f} nats/token on held-out "
        f"completions (threshold {t:g})")),
    "length_drift": Signal(length_drift, _describe_length, needs_probes=True),
    "answer_drop": Signal(answer_drop, _describe_answers, needs_probes=True),
    "chosen_logp_drop": Signal(chosen_logp_drop, _describe_peak_drop),
    "drift": Signal(drift, lambda h, i, t: (
        f"mean |log pi - log pi_ref| on held-out completions reached {h[i]['eval_abs_logratio']:.2f} nats "
        f"(threshold {t:g})")),
    "train_up_eval_down": Signal(train_up_eval_down, _describe_train_up),
    # The generations' health (trainables.health): its threshold is the four-part HealthSettings, not a float.
    "health": Signal(lambda h, t: health.first_unhealthy(h, t), lambda h, i, t: health.describe(h[i], t)),
}
