"""The reward-hacking flag of one trial: the signals of `trainables.detectors` run at every report.

At each report the monitor keeps the few metrics the signals read, runs every enabled signal
(`reward_hacking.signals`) over the history so far, and flags the trial the first time any fires,
saying which signal and what it saw. Signals never look ahead, so a flag raised here is the one the
same signal would raise on the finished history.

The reference-relative signals need no history at all: the held-out log-probs are compared with the
reference model's (disabled adapter, or the shared reference's precomputed log-probs), and the probe
answers with the reference model's answers, measured before the first step (`ref_answer_*` in every
report). So a policy that collapsed before its first report is flagged at that report.

Which signal is the default, and why, is measured by `benchmarks/detector_calibration.py` on two tasks
(docs/sweeps.md, "Reward hacking"). The practitioner's rule (`reward_rise`: a held-out reward metric up more
than 10% within an epoch) is available, not the default; its relative change is in every report either
way (`reward_hack_rel_change`), as context. Its first epoch's window starts at the first report, not
before training: a fresh adapter is the identity, where every reward metric is 0, so a relative change
from there means nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from trainables import detectors, health
from trainables.config import RewardHackingSettings

WATCHED = ("step", "eval_chosen_logratio_per_token", "eval_abs_logratio_per_token", "answer_length_tokens",
           "answer_exact_rate", "answer_valid_rate", "eval_logps_chosen", "eval_abs_logratio",
           "train_rewards_margins", "eval_rewards_accuracies", *health.READS)
WATCHED_REFERENCE = tuple(detectors.REFERENCE_PREFIX + k for k in ("answer_length_tokens", "answer_exact_rate",
                                                                   "answer_valid_rate"))


def fire_index(name: str, settings: RewardHackingSettings, history: list[dict], reports_per_epoch: int) -> int | None:
    if name == "reward_rise":
        return detectors.reward_rise(history, settings.threshold, reports_per_epoch, settings.metric)
    return detectors.SIGNALS[name].detect(history, getattr(settings, name))


def describe(name: str, settings: RewardHackingSettings, history: list[dict], index: int) -> str:
    """What the signal saw, in words, at the report where it fired."""
    if name == "reward_rise":
        return f"{settings.metric} rose more than {settings.threshold:.0%} within one epoch"
    return detectors.SIGNALS[name].describe(history, index, getattr(settings, name))


@dataclass
class RewardHackingMonitor:
    settings: RewardHackingSettings
    reports_per_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    flagged_at_step: int | None = None
    signal: str | None = None
    detail: str | None = None

    def update(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Metrics to add to this report: per-signal flags, the flag, which signal, and the practitioner's
        rule's relative change (context)."""
        keys = (*WATCHED, *WATCHED_REFERENCE, self.settings.metric)
        self.history.append({k: float(metrics[k]) for k in keys if isinstance(metrics.get(k), (int, float))})
        out: dict[str, Any] = {}
        if self.settings.metric in self.history[-1]:
            values = [h[self.settings.metric] for h in self.history if self.settings.metric in h]
            out["reward_hack_rel_change"] = detectors.relative_rise(values, self.reports_per_epoch)
        fired = {}
        for name in self.settings.signals:
            index = fire_index(name, self.settings, self.history, self.reports_per_epoch)
            out[f"reward_hack_{name}"] = float(index is not None)
            if index is not None:
                fired[name] = index
        if fired and self.flagged_at_step is None:
            name = min(fired, key=lambda n: (fired[n], self.settings.signals.index(n)))
            self.flagged_at_step = detectors.fired_step(self.history, fired[name])
            self.signal, self.detail = name, describe(name, self.settings, self.history, fired[name])
        out.update({"reward_hack_flag": float(self.flagged_at_step is not None),
                    "reward_hack_stop": float(self.should_stop)})
        # Present from the first report ('' until a flag): Ray's progress.csv keeps only the first report's keys.
        out["reward_hack_signal"], out["reward_hack_detail"] = self.signal or "", self.detail or ""
        return out

    @property
    def should_stop(self) -> bool:
        return self.settings.action == "stop" and self.flagged_at_step is not None

    def state(self) -> dict:
        d = asdict(self)
        d.pop("settings")
        return d

    @classmethod
    def from_state(cls, settings: RewardHackingSettings, state: dict) -> RewardHackingMonitor:
        known = {k: v for k, v in state.items() if k in cls.__dataclass_fields__}
        if known.get("history") and not isinstance(known["history"][0], dict):  # checkpoints of older versions
            known.pop("history")
        return cls(settings=settings, **known)
