"""What a sweep cost, per trial and in all, from Ray's results: trial-seconds, device-hours, optimizer
steps, tokens, what early stopping saved against running every trial to the end, and the shared
reference's one-off cost.

- Trial-seconds: the trial's own clock at its last report (`time_trial_s`, trainables.timing: from its worker's
  start for the first trial a worker runs, resumes included), else Ray's `time_total_s` (which starts once the
  worker is up and its code imported).
- Device-hours: each trial's seconds times what it held - its share of a GPU when packed (gpu_per_trial),
  else its CPUs (cpu_per_trial) - in hours. GPU-hours on GPUs, CPU-hours otherwise.
- Tokens: `tokens_seen` at the trial's last report, steps x effective batch x the mean tokens of a pair
  (prompt twice, chosen and rejected, after truncation; `trainables.trainer.tokens_per_step`): an
  estimate, exact but for a short last batch.
- Saved by stopping: a stopped trial's steps and seconds projected to its full length at its own
  seconds per step (a trial that never reported projects nothing), less what it ran.
- The shared reference: its one-off seconds, and what it saved, estimated as one such pass per other trial
  (without it each trial computes the reference log-probs of the same data itself).
- Paused: the seconds a trial waited at halving's rungs between its start and its last report; it held no
  worker then, so they are not trial-seconds.
- Where the seconds went: each trial's `time_<phase>_s` at its last report (`trainables.timing`: model load,
  data, trainer set-up, the reference's answers, optimizer steps, evaluation, probes, generation, checkpoints,
  reporting), summed; `other` is the rest of the trial-seconds. The training share is the steps' part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from orchestrator.records import STOPPED, STOPPED_HACKING, TrialRecord
from trainables.timing import PHASES, PREFIX


@dataclass
class TrialCost:
    trial_id: str
    seconds: float
    steps: int
    full_steps: int  # the steps the trial would have run to its end
    device_hours: float
    tokens: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase (trainables.timing), if reported
    paused: float = 0.0  # seconds between its start and its last report that it did not run (halving's rungs)

    @property
    def projected_seconds(self) -> float:
        return self.seconds * self.full_steps / self.steps if self.steps else 0.0


def _summed(name: str) -> property:
    """A TrialCost field summed over the sweep's trials."""
    return property(lambda self: sum(getattr(t, name) for t in self.trials), doc=f"{name}, summed over the trials")


@dataclass
class SweepCost:
    trials: list[TrialCost]
    device: str  # "GPU" or "CPU"
    reference_seconds: float | None = None  # the shared reference's one-off cost; None without one
    reference_reused: bool = False  # an earlier sweep's copy: nothing was computed

    trial_seconds = _summed("seconds")
    device_hours = _summed("device_hours")
    steps = _summed("steps")
    full_steps = _summed("full_steps")
    tokens = _summed("tokens")
    paused_seconds = _summed("paused")

    @property
    def phase_seconds(self) -> dict[str, float]:
        """Seconds per phase over the trials that reported them, and `other`: the rest of those trials' seconds
        (the trainer's own bookkeeping between phases, Ray's work inside the trial); {} when none did."""
        timed = [t for t in self.trials if t.phases]
        if not timed:
            return {}
        out = {p: sum(t.phases.get(p, 0.0) for t in timed) for p in PHASES}
        out["other"] = max(sum(t.seconds for t in timed) - sum(out.values()), 0.0)
        return out

    @property
    def training_share(self) -> float | None:
        """Optimizer-step seconds over trial-seconds (of the trials that reported their phases)."""
        timed = sum(t.seconds for t in self.trials if t.phases)
        return self.phase_seconds["steps"] / timed if timed else None

    def breakdown(self, most: int = 6) -> str:
        """'steps 41%, generation 22%, model_load 12%, ...': where the seconds went, largest first."""
        phases = self.phase_seconds
        total = sum(phases.values())
        if not total:
            return ""
        ranked = sorted(((v, k) for k, v in phases.items() if v > 0), reverse=True)
        return ", ".join(f"{k.replace('_', ' ')} {v / total:.0%}" for v, k in ranked[:most])

    @property
    def saved_steps(self) -> int:
        return self.full_steps - self.steps

    @property
    def saved_seconds(self) -> float:
        return sum(t.projected_seconds - t.seconds for t in self.trials)

    @property
    def reference_saved_seconds(self) -> float | None:
        if self.reference_seconds is None:
            return None
        return self.reference_seconds * max(len(self.trials) - (0 if self.reference_reused else 1), 0)

    def metrics(self) -> dict[str, float]:
        """For the parent MLflow run, under cost.*."""
        out = {"cost.trial_seconds": self.trial_seconds, f"cost.{self.device.lower()}_hours": self.device_hours,
               "cost.steps": self.steps, "cost.full_grid_steps": self.full_steps, "cost.saved_steps": self.saved_steps,
               "cost.saved_seconds": self.saved_seconds, "cost.tokens": self.tokens,
               "cost.paused_seconds": self.paused_seconds}
        if self.training_share is not None:
            out["cost.training_share"] = self.training_share
            out.update({f"cost.seconds_{k}": v for k, v in self.phase_seconds.items()})
        if self.reference_seconds is not None:
            out["cost.reference_seconds"] = 0.0 if self.reference_reused else self.reference_seconds
            out["cost.reference_saved_seconds"] = self.reference_saved_seconds
        return out

    def describe(self) -> str:
        share = f"{self.steps / self.full_steps:.0%}" if self.full_steps else "-"
        text = (f"Cost: {len(self.trials)} trial(s), {self.trial_seconds:.0f} trial-seconds, "
                f"{self.device_hours:.3g} {self.device}-hours, {self.steps} optimizer steps ({share} of the "
                f"{self.full_steps} the trials would have run to their ends), ~{self.tokens:.3g} tokens. "
                f"Stopping early saved {self.saved_steps} steps and ~{self.saved_seconds:.0f} trial-seconds.")
        if self.paused_seconds >= 1:
            text += (f" Trials waited {self.paused_seconds:.0f} s paused at halving's rungs (holding no worker; "
                     "not trial-seconds).")
        if self.training_share is not None:
            text += f" Training share {self.training_share:.0%} (optimizer steps / trial-seconds): {self.breakdown()}."
        if self.reference_seconds is not None:
            made = ("reused from an earlier sweep (no cost)" if self.reference_reused
                    else f"computed once in {self.reference_seconds:.1f} s")
            text += (f" Shared reference {made}; it saved ~{self.reference_saved_seconds:.0f} s of per-trial "
                     "reference passes.")
        return text


def trial_cost(rec: TrialRecord, cpu_per_trial: float, gpu_per_trial: float) -> TrialCost:
    h = rec.history
    last = h.iloc[-1] if len(h) else pd.Series(dtype=float)
    own = last.get(f"{PREFIX}trial_s")
    seconds = float(own if own is not None and pd.notna(own) else last.get("time_total_s", 0.0) or 0.0)
    steps = int(last.get("step", 0) or 0)
    # The steps at a report are the same for every report of the trial: its full length is the steps per
    # report times the reports it was to make.
    full = math.ceil(steps * rec.expected_reports / len(h)) if steps else 0
    if rec.status not in (STOPPED, STOPPED_HACKING):
        full = steps  # completed, failed, diverged: what it ran is all it would have run
    held = gpu_per_trial if gpu_per_trial else cpu_per_trial
    tokens = float(last.get("tokens_seen", 0.0) or 0.0)
    phases = {p: float(last[f"{PREFIX}{p}_s"]) for p in PHASES
              if f"{PREFIX}{p}_s" in last and pd.notna(last[f"{PREFIX}{p}_s"])}
    return TrialCost(trial_id=rec.trial_id, seconds=seconds, steps=steps, full_steps=max(full, steps),
                     device_hours=seconds * held / 3600, tokens=tokens, phases=phases, paused=paused_seconds(h))


def paused_seconds(history: pd.DataFrame) -> float:
    """The trial's span from its start to its last report (Ray's `timestamp`s) less the seconds it ran
    (`time_total_s`, which does not count time paused): what it waited at halving's rungs."""
    if len(history) == 0 or not {"timestamp", "time_total_s", "time_this_iter_s"} <= set(history.columns):
        return 0.0
    first, last = history.iloc[0], history.iloc[-1]
    span = float(last["timestamp"]) - (float(first["timestamp"]) - float(first["time_this_iter_s"]))
    return max(span - float(last["time_total_s"]), 0.0)


def sweep_cost(records: list[TrialRecord], cpu_per_trial: float, gpu_per_trial: float,
               reference_seconds: float | None = None, reference_reused: bool = False) -> SweepCost:
    return SweepCost(trials=[trial_cost(r, cpu_per_trial, gpu_per_trial) for r in records],
                     device="GPU" if gpu_per_trial else "CPU", reference_seconds=reference_seconds,
                     reference_reused=reference_reused)
