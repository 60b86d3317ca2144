"""The reward-hacking flag of one trial, epoch over epoch on a held-out metric.

The practitioner's rule: a reward metric that improves by more than 10% within one epoch means
the learning rate is probably too high. At every report the watched metric is compared with its
value one epoch earlier (`reports_per_epoch` reports back; in the first epoch, with the first
report's value):

    relative change = (now - one epoch ago) / |one epoch ago|

The first epoch's window starts at the first report, not before training: a fresh adapter is the
identity, where every reward metric is 0 (TRL's strict '>' even reports accuracy 0), so a relative
change from there means nothing.

Beside it every report carries the held-out chosen log-prob (`eval_logps_chosen`) and the mean
|log pi - log pi_ref| (`eval_abs_logratio`), the signals that predicted answer-quality collapse
on the synthetic benchmark; which detector to trust is for the analysis to show.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from trainables.config import RewardHackingSettings

EPS = 1e-8


@dataclass
class RewardHackingMonitor:
    settings: RewardHackingSettings
    reports_per_epoch: int
    history: list[float] = field(default_factory=list)
    flagged_at_step: int | None = None
    max_rel_change: float = float("-inf")

    def update(self, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics to add to this report: the window's relative change and whether the trial is flagged."""
        value = metrics.get(self.settings.metric)
        if value is None:
            return {}
        back = self.reports_per_epoch
        start = self.history[-back] if len(self.history) >= back else (self.history[0] if self.history else value)
        self.history.append(float(value))
        rel = (value - start) / max(abs(start), EPS)
        self.max_rel_change = max(self.max_rel_change, rel)
        if rel > self.settings.threshold and self.flagged_at_step is None:
            self.flagged_at_step = int(metrics.get("step", len(self.history)))
        return {"reward_hack_rel_change": rel, "reward_hack_flag": float(self.flagged_at_step is not None),
                "reward_hack_stop": float(self.should_stop)}

    @property
    def should_stop(self) -> bool:
        return self.settings.action == "stop" and self.flagged_at_step is not None

    def state(self) -> dict:
        d = asdict(self)
        d.pop("settings")
        return d

    @classmethod
    def from_state(cls, settings: RewardHackingSettings, state: dict) -> RewardHackingMonitor:
        return cls(settings=settings, **state)
