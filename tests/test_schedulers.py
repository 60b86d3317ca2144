"""ASHA with the guard: a flagged trial is stopped at its rung, never promoted, and leaves the cutoff alone."""

from __future__ import annotations

import itertools
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


# Synchronous halving, driven by a small stand-in for Tune's controller: the same calls in the same order
# (choose_trial_to_run, on_trial_result, stop_trial), two trials running at once, one report per step.

class FakeTrial:
    def __init__(self, tid: str):
        self.trial_id, self.status, self.is_saving = tid, "PENDING", False
        self.run_metadata = SimpleNamespace(last_result={}, last_result_time=0)

    def set_status(self, status: str) -> None:
        self.status = status

    def __repr__(self) -> str:
        return self.trial_id


CLOCK = itertools.count(1)


class FakeController:
    """Starts what the scheduler chooses, then any PENDING trial (as Tune does), at most `slots` at once."""

    def __init__(self, scheduler, trials, slots: int = 2):
        self.scheduler, self.trials, self.slots, self.running = scheduler, trials, slots, []

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial) -> None:
        if trial.status in ("PENDING", "PAUSED"):
            self.scheduler.on_trial_remove(self, trial)
        elif trial.status == "RUNNING":
            self.scheduler.on_trial_complete(self, trial, trial.run_metadata.last_result)
        trial.status = "TERMINATED"
        if trial in self.running:
            self.running.remove(trial)

    def step(self, metric, max_t: int) -> bool:
        """Fill the slots, run the longest-waiting running trial one report; False when nothing can run."""
        while len(self.running) < self.slots:
            chosen = self.scheduler.choose_trial_to_run(self)
            chosen = chosen or next((t for t in self.trials if t.status == "PENDING" and t not in self.running), None)
            if chosen is None:
                break
            chosen.status = "RUNNING"
            self.running.append(chosen)
        if not self.running:
            return False
        trial = self.running.pop(0)
        t = trial.run_metadata.last_result.get("training_iteration", 0) + 1
        result = {"training_iteration": t, METRIC: metric[trial.trial_id][t - 1], "reward_hack_flag": 0.0}
        trial.run_metadata.last_result = result
        trial.run_metadata.last_result_time = next(CLOCK)
        action = self.scheduler.on_trial_result(self, trial, result)
        if action == "STOP" or t == max_t:
            self.stop_trial(trial)
        elif action == "PAUSE":
            trial.status = "PAUSED"
        else:
            self.running.append(trial)
        return True


def halving(num_trials: int = 4):
    from orchestrator.schedulers import SyncHalving

    s = SyncHalving(num_trials, grace_period=1, max_t=4, eta=2)  # rungs at 1, 2 and 4 reports
    s.set_search_properties(METRIC, "max")
    return s


# Per trial, its metric at reports 1..4. Three tie at rung 1 for two places: the sweep's order decides.
METRICS = {"x_00000": [0.6, 0.6, 0.7, 0.8], "x_00001": [0.6, 0.5, 0.6, 0.6], "x_00002": [0.6, 0.9, 0.9, 0.9],
           "x_00003": [0.4, 0.9, 0.95, 0.99]}


def outcome(trials) -> dict[str, int]:
    """Each trial's last report once the sweep is over: 4 for the one that ran to the end."""
    return {t.trial_id: t.run_metadata.last_result.get("training_iteration", 0) for t in trials}


def run_sweep(scheduler, trials, steps_before_kill: int | None = None) -> bool:
    """Run until done (True) or for `steps_before_kill` steps (False). Fails on a hang: live trials left and
    nothing to run."""
    ctl = FakeController(scheduler, trials)
    steps = 0
    while steps_before_kill is None or steps < steps_before_kill:
        if not ctl.step(METRICS, max_t=4):
            live = [t for t in trials if t.status != "TERMINATED"]
            assert not live, f"hang: {[(t, t.status) for t in live]} live, nothing running"
            return True
        steps += 1
    return all(t.status == "TERMINATED" for t in trials)


def new_sweep():
    """(scheduler, trials): every trial of METRICS added, none run."""
    trials = [FakeTrial(tid) for tid in METRICS]
    s = halving()
    for t in trials:
        s.on_trial_add(None, t)
    return s, trials


def test_synchronous_halving_stops_the_same_trials_every_time():
    s, trials = new_sweep()
    assert run_sweep(s, trials)
    # Rung 1 keeps two of the three tied at 0.6 (the later ones in the sweep's order), rung 2 the better of those.
    assert outcome(trials) == {"x_00000": 1, "x_00001": 2, "x_00002": 4, "x_00003": 1}


def test_a_resume_at_any_moment_ends_like_the_uninterrupted_sweep():
    s, whole = new_sweep()
    assert run_sweep(s, whole)
    expected = outcome(whole)
    steps = sum(expected.values())
    for kill_at in range(1, steps):
        s, trials = new_sweep()
        if run_sweep(s, trials, steps_before_kill=kill_at):
            continue
        # What `resume` hands a new scheduler: finished trials as they were, every other one PENDING at its last
        # report, newest result first.
        restored = [FakeTrial(t.trial_id) for t in trials]
        for old, new in zip(trials, restored):
            new.run_metadata.last_result = dict(old.run_metadata.last_result)
            new.run_metadata.last_result_time = old.run_metadata.last_result_time
            new.status = "TERMINATED" if old.status == "TERMINATED" else "PENDING"
        s = halving()
        for t in sorted(restored, key=lambda t: -t.run_metadata.last_result_time):
            s.on_trial_add(None, t)
        assert run_sweep(s, restored), f"killed after {kill_at} reports"
        assert outcome(restored) == expected, f"killed after {kill_at} reports"


def test_a_trial_ray_fails_behind_the_schedulers_back_does_not_hold_up_its_rung():
    """Ray fails a trial straight to ERROR, telling no scheduler, when the reused worker it was handed is not free
    in time. Rung 1 is then decided on the three trials that reached it, instead of waiting for the fourth."""
    s, trials = new_sweep()
    failed = trials[1]
    failed.status = "ERROR"  # before it ever ran, as in the CI run where the sweep hung
    assert run_sweep(s, [t for t in trials if t is not failed])
    assert outcome(trials) == {"x_00000": 2, "x_00001": 0, "x_00002": 4, "x_00003": 1}
    assert failed not in s._state["bracket"]._live_trials


def test_reports_that_halving_never_decides_on_are_named_and_a_schedule_without_them_says_nothing():
    from orchestrator.schedulers import idle_reports_note

    # The real-model example as it was: 9 trials, 4 reports, the rung at report 2, the 3 promoted to report 4.
    note = idle_reports_note(9, grace_period=2, max_reports=4, eta=3)
    assert "decides at reports 2 and 4 of 4" in note and "reports 1 and 3 decide nothing" in note
    assert "dpo.reports_per_epoch" in note
    assert idle_reports_note(9, grace_period=1, max_reports=2, eta=3) is None  # as it is now: both reports decide
    # The winner runs past the last rung to its last report, which the analysis reads.
    assert "reports 3, 5, 6 and 7 decide nothing" in idle_reports_note(4, grace_period=1, max_reports=8, eta=2)
