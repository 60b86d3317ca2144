"""How trials are stopped early: ASHA on a held-out metric, with time measured in reports.

Every trial reports `reports_per_epoch` times per epoch whatever its data size, batch or
accumulation, so `training_iteration` (one per report) is a fair clock across trials.
With 9 trials, grace_period 1 and reduction_factor 3, the rungs sit at 1, 3 and 9 reports:
after its first report a trial continues only if it is in the top third of those that reached it.
"""

from __future__ import annotations

from orchestrator.config import SchedulerSettings


def build_scheduler(settings: SchedulerSettings, max_reports: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.kind == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=max(max_reports, settings.grace_period),
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
    )
