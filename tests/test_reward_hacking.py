"""The reward-hacking monitor: the calibrated default signal, the practitioner's rule (opt-in), and which
signal fired."""

from __future__ import annotations

import pytest

from trainables.config import RewardHackingSettings
from trainables.reward_hacking import RewardHackingMonitor


def feed(values, reports_per_epoch=4, **settings):
    """The practitioner's rule alone over a series of the watched metric."""
    m = RewardHackingMonitor(RewardHackingSettings(signals=["reward_rise"], **settings), reports_per_epoch)
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
    m = RewardHackingMonitor(RewardHackingSettings(signals=["reward_rise"], metric="eval_rewards_accuracies"), 2)
    out = m.update({"eval_rewards_margins": 0.9})  # the watched metric is absent: nothing fires
    assert "reward_hack_rel_change" not in out and out["reward_hack_flag"] == 0


def test_state_round_trips_for_resume():
    m, _ = feed([0.70, 0.72])
    restored = RewardHackingMonitor.from_state(m.settings, m.state())
    assert restored.history == m.history and restored.update({"eval_rewards_margins": 0.9, "step": 30})[
        "reward_hack_flag"] == 1


def test_default_signal_is_the_chosen_logp_drop_and_the_flag_says_what_it_saw():
    m = RewardHackingMonitor(RewardHackingSettings(), 4)
    assert m.settings.signals == ["chosen_logp_drop"]
    # The reward margin shoots up (the practitioner's rule would fire at once) while the chosen answers
    # hold their probability: no flag. Then they lose it: flag, at that report.
    logps = [-0.60, -0.55, -0.52, -0.50, -0.58, -0.75]
    margins = [0.01, 0.2, 0.5, 0.9, 1.5, 2.5]
    out = [m.update({"step": 8 * (i + 1), "eval_logps_chosen": lp, "eval_rewards_margins": mg})
           for i, (lp, mg) in enumerate(zip(logps, margins, strict=True))]
    assert [o["reward_hack_flag"] for o in out] == [0, 0, 0, 0, 0, 1]
    assert out[1]["reward_hack_rel_change"] > 10  # the rule's view, reported as context only
    assert m.flagged_at_step == 48 and m.signal == "chosen_logp_drop"
    assert out[-1]["reward_hack_signal"] == "chosen_logp_drop"
    assert out[-1]["reward_hack_detail"] == "held-out chosen log-prob fell 0.25 nats below its peak (threshold 0.1)"


def test_several_signals_the_first_to_fire_names_the_flag():
    settings = RewardHackingSettings(signals=["chosen_logp_drop", "drift"], drift=1.0)
    m = RewardHackingMonitor(settings, 4)
    m.update({"step": 1, "eval_logps_chosen": -0.5, "eval_abs_logratio": 0.3})
    out = m.update({"step": 2, "eval_logps_chosen": -0.5, "eval_abs_logratio": 1.2})
    assert out["reward_hack_drift"] == 1 and out["reward_hack_chosen_logp_drop"] == 0
    assert m.signal == "drift" and "reached 1.20 nats" in m.detail
    out = m.update({"step": 3, "eval_logps_chosen": -0.9, "eval_abs_logratio": 1.5})
    assert out["reward_hack_chosen_logp_drop"] == 1 and m.signal == "drift"  # the first signal keeps the flag


def test_unknown_signal_is_refused():
    with pytest.raises(ValueError, match="signals"):
        RewardHackingSettings(signals=["vibes"])
