"""Where a trial's seconds go: the phase clock (trainables.timing) and the sweep's cost breakdown."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from orchestrator.costs import sweep_cost
from orchestrator.records import TrialRecord
from trainables.timing import PhaseClock


def test_phases_are_exclusive_and_fit_in_the_wall_time():
    clock = PhaseClock()
    with clock.phase("evaluation"):
        time.sleep(0.02)
        with clock.phase("generation"):  # counted for generation only, not evaluation as well
            time.sleep(0.05)
        time.sleep(0.02)
    clock.begin("steps")
    time.sleep(0.01)
    totals = clock.totals()  # an open phase counts up to now
    clock.end("steps")
    assert totals["generation"] == pytest.approx(0.05, abs=0.03)
    assert totals["evaluation"] == pytest.approx(0.04, abs=0.03)
    assert totals["steps"] >= 0.01
    assert sum(v for k, v in totals.items() if k != "trial") <= totals["trial"]
    clock.end("not open")  # ignored, not an error


def test_a_resumed_clock_carries_the_earlier_runs_seconds():
    first = PhaseClock()
    with first.phase("steps"):
        time.sleep(0.01)
    saved = first.totals()
    again = PhaseClock()
    again.carry(saved)
    assert again.totals()["steps"] == pytest.approx(saved["steps"])
    assert again.totals()["trial"] >= saved["trial"]


def test_the_cost_line_gives_the_training_share_and_where_the_rest_went():
    def rec(tid, steps_s, load_s, total):
        # Ray's clock starts once the worker is up; the trial's own clock counts its start too: the larger one.
        h = pd.DataFrame([{"step": 8, "time_total_s": total - 2, "time_steps_s": steps_s, "time_model_load_s": load_s,
                           "time_trial_s": total}])
        return TrialRecord(trial_id=tid, params={}, history=h, expected_reports=1)

    cost = sweep_cost([rec("a", 3.0, 5.0, 10.0), rec("b", 1.0, 5.0, 10.0)], cpu_per_trial=1, gpu_per_trial=0)
    assert cost.trials[0].phases == {"steps": 3.0, "model_load": 5.0}
    assert cost.trial_seconds == pytest.approx(20.0)  # the trials' own clocks, not Ray's 16
    assert cost.training_share == pytest.approx(4.0 / 20.0)
    assert cost.phase_seconds["other"] == pytest.approx(20.0 - 14.0)
    line = cost.describe()
    assert "Training share 20% (optimizer steps / trial-seconds): model load 50%, other 30%, steps 20%" in line
    assert cost.metrics()["cost.training_share"] == pytest.approx(0.2)
    # Results from before trials reported their phases: no share rather than a wrong one.
    old = TrialRecord(trial_id="c", params={}, history=pd.DataFrame([{"step": 8, "time_total_s": 10.0}]),
                      expected_reports=1)
    assert sweep_cost([old], 1, 0).training_share is None and "Training share" not in sweep_cost([old], 1, 0).describe()


def test_paused_seconds_are_the_span_a_trial_did_not_run():
    from orchestrator.costs import paused_seconds

    # Ran 5 s to report 1 (t=105), waited at the rung, resumed and ran 5 s more to report 2 at t=160.
    h = pd.DataFrame([{"timestamp": 105.0, "time_this_iter_s": 5.0, "time_total_s": 5.0},
                      {"timestamp": 160.0, "time_this_iter_s": 5.0, "time_total_s": 10.0}])
    assert paused_seconds(h) == pytest.approx(60.0 - 10.0)
    assert paused_seconds(pd.DataFrame()) == 0.0
