"""How trials are stopped early, with time measured in reports.

Every trial reports `reports_per_epoch` times per epoch whatever its data size, batch or
accumulation, so `training_iteration` (one per report) is a fair clock across trials.

- `asha` (Ray's ASHAScheduler): with 9 trials, grace_period 1 and reduction_factor 3, the rungs sit at
  1, 3 and 9 reports; a trial arriving at a rung continues if it is in the top third of those already
  there. Which trials those are depends on arrival order: two identical sweeps can stop different trials.
- `halving` (synchronous successive halving, `SyncHalving`): every trial runs to the first rung and
  pauses there; once all have arrived, the top 1/reduction_factor continue (resumed from their
  checkpoints) and the rest stop; and so on up the rungs. The decisions depend only on the results,
  never on timing: the same sweep stops the same trials.
- `fifo`: every trial runs to the end.
"""

from __future__ import annotations

import logging
import math

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, TrialScheduler
from ray.tune.schedulers.hyperband import _Bracket

from orchestrator.config import SchedulerSettings
from orchestrator.eligibility import eligible

logger = logging.getLogger(__name__)


def halving_rungs(num_trials: int, grace_period: int, max_t: int, eta: float) -> list[tuple[int, int]]:
    """(reports, trials still running) at each rung of synchronous successive halving: the first rung at
    `grace_period` with every trial, then ceil(n / eta) trials at eta times the reports, capped at max_t."""
    rungs, n, r = [], num_trials, grace_period
    while n > 1 and r < max_t:
        rungs.append((r, n))
        n, r = math.ceil(n / eta), min(int(r * eta), max_t)
    rungs.append((r, n))
    return rungs


def idle_reports_note(num_trials: int, grace_period: int, max_reports: int, eta: float) -> str | None:
    """A note when some of a halving sweep's reports decide nothing: every report is an evaluation (held-out pairs,
    probes, generations), and one that falls between rungs only draws the curves. None when every report counts."""
    rungs = halving_rungs(num_trials, grace_period, max(max_reports, grace_period), eta)
    deciding = {r for r, _ in rungs} | {max_reports}  # the last: what the analysis reads of the trial that goes on
    idle = [k for k in range(1, max_reports + 1) if k not in deciding]
    if not idle:
        return None

    def listed(xs) -> str:
        xs = [str(x) for x in xs]
        return xs[0] if len(xs) == 1 else f"{', '.join(xs[:-1])} and {xs[-1]}"

    one = len(idle) == 1
    return (f"synchronous halving decides at reports {listed(sorted(deciding))} of {max_reports}; "
            f"{'report' if one else 'reports'} {listed(idle)} {'decides' if one else 'decide'} nothing and "
            f"{'costs' if one else 'cost'} an evaluation like the others (held-out pairs, generations, a bundled "
            "task's probes). dpo.reports_per_epoch sets how many reports there are, scheduler.grace_period where the "
            "first rung falls")


class WholeSweepBracket(_Bracket):
    """Ray's bracket, holding every trial of the sweep: a rung is decided once all `num_trials` have joined and
    reported there, never on the few that arrived first (Tune adds trials as slots free up), and on eligibility
    before the metric."""

    def __init__(self, num_trials: int, max_abs_logratio: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_trials = num_trials
        self.max_abs_logratio = max_abs_logratio

    def cur_iter_done(self) -> bool:
        return len(self._all_trials) >= self.num_trials and super().cur_iter_done()

    def successive_halving(self, metric: str, metric_op: float):
        # Ray ranks by the metric alone, so a collapsed trial (flagged, or drifted out of the analysis' sweet
        # spot) could win every rung on accuracy. Ineligible trials rank below every eligible one; ties keep the
        # sweep's trial order.
        results = dict(self._live_trials)
        self._live_trials = {t: {**r, "_rank": metric_op * r[metric] if eligible(r, metric, self.max_abs_logratio)
                                 else -math.inf} for t, r in results.items()}
        try:
            return super().successive_halving("_rank", 1.0)
        finally:
            self._live_trials = {t: results[t] for t in self._live_trials}


class SyncHalving(HyperBandScheduler):
    """Ray's HyperBand machinery with one bracket holding every trial of the sweep: synchronous successive
    halving (`halving_rungs`). Trials pause at each rung until all have reported there; the best eligible ones
    (`eligible`) go on. At most `max_running` run at once (resources.max_concurrent_trials). A `resume` picks up
    at the rung the sweep had reached (`_settle_restored`)."""

    def __init__(self, num_trials: int, grace_period: int, max_t: int, eta: float, max_running: int | None = None,
                 max_abs_logratio: float | None = None):
        super().__init__(time_attr="training_iteration", max_t=max_t, reduction_factor=eta)
        self.num_trials, self.grace_period, self.eta = num_trials, grace_period, eta
        self.max_running, self.max_abs_logratio = max_running, max_abs_logratio
        self.halvings = len(halving_rungs(num_trials, grace_period, max_t, eta)) - 1
        self._restored = False

    def on_trial_add(self, tune_controller, trial):
        if not self._metric or not self._metric_op:
            raise ValueError("SyncHalving needs the sweep's metric and mode (tune.TuneConfig)")
        if self._state["bracket"] is None:
            self._state["bracket"] = WholeSweepBracket(
                num_trials=self.num_trials, max_abs_logratio=self.max_abs_logratio, time_attr=self._time_attr,
                max_trials=self.num_trials, init_t_attr=self.grace_period, max_t_attr=self._max_t_attr,
                eta=self.eta, s=self.halvings)
            self._hyperbands = [[self._state["bracket"]]]
        bracket = self._state["bracket"]
        self._trial_info[trial] = bracket, 0
        if trial.status in ("TERMINATED", "ERROR"):
            # Finished before a `resume`: it has joined the sweep, and is never waited for at a rung.
            bracket._all_trials.append(trial)
            return
        bracket.add_trial(trial)
        last = trial.run_metadata.last_result
        if trial.status == "PENDING" and self._time_attr in last:
            # Restored by a `resume` after it had reported: it stands where it last reported and waits there,
            # paused as under an uninterrupted run, until `_settle_restored` has rebuilt the rungs. Ray files the
            # trial under its status only after this call, so the status set here is the one it keeps.
            bracket._live_trials[trial] = last
            trial.set_status("PAUSED")
            self._restored = True

    def choose_trial_to_run(self, tune_controller):
        bracket = self._state["bracket"]
        self._forget_ended(tune_controller, bracket)
        if self._restored and len(bracket._all_trials) >= self.num_trials:
            self._restored = False
            self._settle_restored(tune_controller, bracket)
        running = sum(t.status == "RUNNING" for t in tune_controller.get_trials())
        if self.max_running and running >= self.max_running:
            return None
        return super().choose_trial_to_run(tune_controller)

    def _forget_ended(self, tune_controller, bracket: WholeSweepBracket) -> None:
        """Drop from the rung a trial that Ray ended without telling the scheduler, and decide the rung without it.

        Every usual end (a result, an error, a stop) reaches `on_trial_remove`; one path does not: a reused worker
        that is not free in time fails the trial it was handed straight to ERROR. A rung waiting for that trial
        would wait forever, with nothing running."""
        for trial in [t for t in bracket._live_trials if t.status in ("ERROR", "TERMINATED")]:
            logger.warning("Synchronous halving: trial %s ended (%s) without a result at its rung; the rung is "
                           "decided without it", trial, trial.status)
            self.on_trial_remove(tune_controller, trial)

    def _settle_restored(self, tune_controller, bracket: WholeSweepBracket) -> None:
        """After a `resume` the bracket is new and holds every unfinished trial at its last report. Replay the
        rungs the sweep had already decided (every live trial stands at or past the rung, and no more of them are
        left than it promotes, so halving keeps them all); then, if every live trial stands at the rung the sweep
        was waiting on, decide it on the results they reported there: the decision an uninterrupted run made. A
        trial short of the current rung goes on; one standing at it waits, paused."""
        # `resume` adds the trials newest result first; ties at a rung keep the sweep's own trial order.
        bracket._live_trials = dict(sorted(bracket._live_trials.items(), key=lambda item: item[0].trial_id))
        while bracket._live_trials and bracket.cur_iter_done() and not bracket.finished():
            undecided = len(bracket._live_trials) > math.ceil(bracket._n / self.eta)
            bracket.is_being_processed = True  # stopping a trial here must not process the bracket again
            _, bad = bracket.successive_halving(self._metric, self._metric_op)
            self._num_stopped += len(bad)
            for trial in bad:
                tune_controller.stop_trial(trial)
            if undecided:
                break
        for trial in list(bracket._live_trials):
            if bracket.finished():  # it had already reported at the last rung
                tune_controller.stop_trial(trial)
            elif bracket.continue_trial(trial):
                bracket.trials_to_unpause.add(trial)

    def debug_string(self) -> str:
        return f"Synchronous successive halving: {self._state['bracket']}"


def build_scheduler(settings: SchedulerSettings, max_reports: int, num_trials: int | None = None,
                    max_running: int | None = None, max_abs_logratio: float | None = None):
    """`num_trials`: how many trials the sweep has (synchronous halving puts them all in one bracket);
    `max_running`: resources.max_concurrent_trials, which halving enforces itself; `max_abs_logratio`:
    analysis.max_abs_logratio, beyond which neither halving nor ASHA promotes a trial (nor a flagged one)."""
    max_t = max(max_reports, settings.grace_period)
    if settings.kind == "fifo":
        return FIFOScheduler()
    if settings.kind == "halving":
        if not num_trials:
            raise ValueError("scheduler.kind 'halving' needs the number of trials (a grid, or search.num_samples)")
        return SyncHalving(num_trials, settings.grace_period, max_t, settings.reduction_factor, max_running,
                           max_abs_logratio)
    return guarded_asha(max_t, settings.grace_period, settings.reduction_factor, max_abs_logratio)


class GuardedASHA(ASHAScheduler):
    """Ray's ASHA, except that a trial not `eligible` at a rung is stopped there instead of being judged on its
    metric (a collapsed policy can top the ranking). It is not recorded at the rung: the cutoff stays that of the
    eligible trials."""

    def __init__(self, max_abs_logratio: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.max_abs_logratio = max_abs_logratio

    def on_trial_result(self, tune_controller, trial, result):
        t = result.get(self._time_attr)
        if t is not None and self._metric in result and not eligible(result, self._metric, self.max_abs_logratio):
            bracket = self._trial_info[trial.trial_id]
            if any(t >= milestone and trial.trial_id not in recorded for milestone, recorded in bracket._rungs):
                self._num_stopped += 1
                return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, result)


def guarded_asha(max_t: int, grace_period: int, eta: float, max_abs_logratio: float | None = None) -> GuardedASHA:
    return GuardedASHA(max_abs_logratio, time_attr="training_iteration", max_t=max_t, grace_period=grace_period,
                       reduction_factor=eta)
