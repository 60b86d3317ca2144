"""The reward-hacking monitor: relative rise of a held-out metric within one epoch of reports."""

from __future__ import annotations

import pytest

from trainables.config import RewardHackingSettings
from trainables.reward_hacking import RewardHackingMonitor


def feed(values, reports_per_epoch=4, **settings):
    m = RewardHackingMonitor(RewardHackingSettings(**settings), reports_per_epoch)
    return m, [m.update({m.settings.metric: v, "step": 10 * (i + 1)}) for i, v in enumerate(values)]


def test_a_jump_of_more_than_ten_percent_within_an_epoch_flags():
    m, out = feed([0.70, 0.80, 0.90, 0.95])
    assert out[0]["reward_hack_rel_change"] == 0 and out[0]["reward_hack_flag"] == 0
    assert out[1]["reward_hack_rel_change"] == pytest.approx(0.80 / 0.70 - 1)
    assert out[1]["reward_hack_flag"] == 1 and m.flagged_at_step == 20
    assert all(o["reward_hack_flag"] == 1 for o in out[1:])  # stays flagged


def test_slow_learning_is_not_flagged_and_the_window_is_one_epoch():
    # +3% per report: within an epoch of 4 reports (3 steps of the window) under 10%...
    values = [0.60 * 1.03**i for i in range(4)]
    _, out = feed(values)
    assert not any(o["reward_hack_flag"] for o in out)
    # ...but the window is one epoch: report 5 is compared with report 1 (4 reports back).
    _, out = feed(values + [values[-1] * 1.03])
    assert out[-1]["reward_hack_rel_change"] == pytest.approx(1.03**4 - 1)
    assert out[-1]["reward_hack_flag"] == 1


def test_threshold_metric_and_stop_action_are_configurable():
    m, out = feed([0.70, 0.80], threshold=0.2)
    assert not m.flagged_at_step and not m.should_stop
    m, out = feed([0.70, 0.80], action="stop")
    assert m.should_stop and out[-1]["reward_hack_stop"] == 1
    m = RewardHackingMonitor(RewardHackingSettings(metric="eval_rewards_accuracies"), 2)
    assert m.update({"eval_rewards_margins": 0.9}) == {}  # the watched metric is absent: nothing to say


def test_state_round_trips_for_resume():
    m, _ = feed([0.70, 0.72])
    restored = RewardHackingMonitor.from_state(m.settings, m.state())
    assert restored.history == m.history and restored.update({"eval_rewards_margins": 0.9, "step": 30})[
        "reward_hack_flag"] == 1
