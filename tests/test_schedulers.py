"""ASHA with the guard: a flagged trial is stopped at its rung, never promoted, and leaves the cutoff alone."""

from __future__ import annotations

from types import SimpleNamespace

from orchestrator.schedulers import guarded_asha

METRIC = "eval_rewards_accuracies"


def asha():
    s = guarded_asha(max_t=9, grace_period=1, eta=3)
    s.set_search_properties(METRIC, "max")
    return s


def trial(tid: str):
    return SimpleNamespace(trial_id=tid, status="RUNNING")


def result(t: int, value: float, flag: bool = False) -> dict:
    return {"training_iteration": t, METRIC: value, "reward_hack_flag": float(flag)}


def test_a_flagged_trial_is_stopped_at_its_rung_and_not_recorded_there():
    s = asha()
    good, hacked = trial("good"), trial("hacked")
    for t in (good, hacked):
        s.on_trial_add(None, t)
    assert s.on_trial_result(None, good, result(1, 0.70)) == "CONTINUE"
    # The best accuracy of the rung, but flagged: stopped, although plain ASHA would promote it.
    assert s.on_trial_result(None, hacked, result(1, 0.99, flag=True)) == "STOP"
    rung_1 = next(recorded for milestone, recorded in s._trial_info["good"]._rungs if milestone == 1)
    assert set(rung_1) == {"good"}  # the cutoff is that of the eligible trials


def test_without_a_flag_it_is_plain_asha():
    s = asha()
    a, b, c = trial("a"), trial("b"), trial("c")
    for t in (a, b, c):
        s.on_trial_add(None, t)
    assert s.on_trial_result(None, a, result(1, 0.9)) == "CONTINUE"
    assert s.on_trial_result(None, b, result(1, 0.5)) == "STOP"  # below the rung's top third
    assert s.on_trial_result(None, c, result(1, 0.95)) == "CONTINUE"


def test_a_trial_flagged_between_rungs_runs_to_the_next_rung_and_stops_there():
    s = asha()
    a = trial("a")
    s.on_trial_add(None, a)
    assert s.on_trial_result(None, a, result(1, 0.8)) == "CONTINUE"
    assert s.on_trial_result(None, a, result(2, 0.9, flag=True)) == "CONTINUE"  # between rungs 1 and 3
    assert s.on_trial_result(None, a, result(3, 0.95, flag=True)) == "STOP"
