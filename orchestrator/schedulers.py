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

import math

from orchestrator.config import SchedulerSettings
from orchestrator.eligibility import eligible


def halving_rungs(num_trials: int, grace_period: int, max_t: int, eta: float) -> list[tuple[int, int]]:
    """(reports, trials still running) at each rung of synchronous successive halving: the first rung at
    `grace_period` with every trial, then ceil(n / eta) trials at eta times the reports, capped at max_t."""
    rungs, n, r = [], num_trials, grace_period
    while n > 1 and r < max_t:
        rungs.append((r, n))
        n, r = math.ceil(n / eta), min(int(r * eta), max_t)
    rungs.append((r, n))
    return rungs


def sync_halving(num_trials: int, grace_period: int, max_t: int, eta: float, max_running: int | None = None,
                 max_abs_logratio: float | None = None):
    """Ray's HyperBand machinery with one bracket holding every trial of the sweep: synchronous successive
    halving (`halving_rungs`). Trials pause at each rung until all have reported there; the best eligible ones
    (`eligible`) go on. At most `max_running` run at once (resources.max_concurrent_trials)."""
    from ray.tune.schedulers import HyperBandScheduler
    from ray.tune.schedulers.hyperband import _Bracket

    halvings = len(halving_rungs(num_trials, grace_period, max_t, eta)) - 1

    class WholeSweepBracket(_Bracket):
        # Tune adds trials as slots free up: a rung is decided only once every trial of the sweep has joined
        # and reported there, never on the few that arrived first.
        def cur_iter_done(self) -> bool:
            return len(self._all_trials) >= num_trials and super().cur_iter_done()

        def successive_halving(self, metric: str, metric_op: float):
            # Ray ranks by the metric alone, so a collapsed trial (flagged, or drifted out of the analysis'
            # sweet spot) could win every rung on accuracy. Ineligible trials rank below every eligible one;
            # ties keep the sweep's trial order.
            results = dict(self._live_trials)
            self._live_trials = {t: {**r, "_rank": metric_op * r[metric] if eligible(r, metric, max_abs_logratio)
                                     else -math.inf} for t, r in results.items()}
            try:
                return super().successive_halving("_rank", 1.0)
            finally:
                self._live_trials = {t: results[t] for t in self._live_trials}

    class SyncHalving(HyperBandScheduler):
        def on_trial_add(self, tune_controller, trial):
            if not self._metric or not self._metric_op:
                raise ValueError("SyncHalving needs the sweep's metric and mode (tune.TuneConfig)")
            if self._state["bracket"] is None:
                self._state["bracket"] = WholeSweepBracket(time_attr=self._time_attr, max_trials=num_trials,
                                                           init_t_attr=grace_period, max_t_attr=max_t, eta=eta,
                                                           s=halvings)
                self._hyperbands = [[self._state["bracket"]]]
            bracket = self._state["bracket"]
            self._trial_info[trial] = bracket, 0
            if trial.status in ("TERMINATED", "ERROR"):
                # Finished before a `resume`: it has joined the sweep, and is never waited for at a rung.
                bracket._all_trials.append(trial)
                return
            bracket.add_trial(trial)

        def choose_trial_to_run(self, tune_controller):
            running = sum(t.status == "RUNNING" for t in tune_controller.get_trials())
            if max_running and running >= max_running:
                return None
            return super().choose_trial_to_run(tune_controller)

        def debug_string(self) -> str:
            return f"Synchronous successive halving: {self._state['bracket']}"

    return SyncHalving(time_attr="training_iteration", max_t=max_t, reduction_factor=eta)


def build_scheduler(settings: SchedulerSettings, max_reports: int, num_trials: int | None = None,
                    max_running: int | None = None, max_abs_logratio: float | None = None):
    """`num_trials`: how many trials the sweep has (synchronous halving puts them all in one bracket);
    `max_running`: resources.max_concurrent_trials, which halving enforces itself; `max_abs_logratio`:
    analysis.max_abs_logratio, beyond which neither halving nor ASHA promotes a trial (nor a flagged one)."""
    from ray.tune.schedulers import FIFOScheduler

    max_t = max(max_reports, settings.grace_period)
    if settings.kind == "fifo":
        return FIFOScheduler()
    if settings.kind == "halving":
        if not num_trials:
            raise ValueError("scheduler.kind 'halving' needs the number of trials (a grid, or search.num_samples)")
        return sync_halving(num_trials, settings.grace_period, max_t, settings.reduction_factor, max_running,
                            max_abs_logratio)
    return guarded_asha(max_t, settings.grace_period, settings.reduction_factor, max_abs_logratio)


def guarded_asha(max_t: int, grace_period: int, eta: float, max_abs_logratio: float | None = None):
    """Ray's ASHA, except that a trial not `eligible` at a rung is stopped there instead of being judged on its
    metric (a collapsed policy can top the ranking). It is not recorded at the rung: the cutoff stays that of
    the eligible trials."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class GuardedASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            t = result.get(self._time_attr)
            if t is not None and self._metric in result and not eligible(result, self._metric, max_abs_logratio):
                bracket = self._trial_info[trial.trial_id]
                if any(t >= milestone and trial.trial_id not in recorded for milestone, recorded in bracket._rungs):
                    self._num_stopped += 1
                    return TrialScheduler.STOP
            return super().on_trial_result(tune_controller, trial, result)

    return GuardedASHA(time_attr="training_iteration", max_t=max_t, grace_period=grace_period,
                       reduction_factor=eta)
