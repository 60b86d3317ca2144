"""The reward-hacking monitor: the calibrated default signal, the practitioner's rule (opt-in), and which
signal fired."""

from __future__ import annotations

import pytest

from trainables import detectors, health
from trainables.config import RewardHackingSettings, TrialSpec
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


def test_several_signals_the_first_to_fire_names_the_flag():
    settings = RewardHackingSettings(signals=["chosen_logp_drop", "drift"], chosen_logp_drop=0.1, drift=1.0)
    m = RewardHackingMonitor(settings, 4)
    m.update({"step": 1, "eval_logps_chosen": -0.5, "eval_abs_logratio": 0.3})
    out = m.update({"step": 2, "eval_logps_chosen": -0.5, "eval_abs_logratio": 1.2})
    assert out["reward_hack_drift"] == 1 and out["reward_hack_chosen_logp_drop"] == 0
    assert m.signal == "drift" and "reached 1.20 nats" in m.detail
    out = m.update({"step": 3, "eval_logps_chosen": -0.9, "eval_abs_logratio": 1.5})
    assert out["reward_hack_chosen_logp_drop"] == 1 and m.signal == "drift"  # the first signal keeps the flag


def test_per_token_displacement_reads_the_same_on_short_and_long_completions():
    # The measured long-completion trial (answers improved 0.20 -> 0.425): the summed chosen log-prob
    # fell 5.6 nats below its peak over ~40 tokens. The running-peak sum flags it; per token it is -0.14.
    long_healthy = [{"step": 6, "eval_logps_chosen": -48.8, "eval_chosen_logratio_per_token": -0.05},
                    {"step": 12, "eval_logps_chosen": -54.4, "eval_chosen_logratio_per_token": -0.14}]
    assert detectors.chosen_logp_drop(long_healthy, 1.0) == 1
    assert detectors.chosen_displacement(long_healthy, 0.5) is None
    # A short answer destroyed: -96.7 nats over ~13 tokens, -7.5 per token (measured, lr 1e-2).
    destroyed = [{"step": 2, "eval_logps_chosen": -96.7, "eval_chosen_logratio_per_token": -7.48}]
    assert detectors.chosen_displacement(destroyed, 0.5) == 0  # no peak needed: the first report is enough
    m = RewardHackingMonitor(RewardHackingSettings(signals=["chosen_displacement"], chosen_displacement=0.5), 4)
    m.update(destroyed[0])
    assert m.flagged_at_step == 2 and m.signal == "chosen_displacement"
    assert m.detail == "held-out chosen completions fell 7.48 nats/token below the reference (threshold 0.5)"


def test_length_drift_is_relative_to_the_reference_model_both_ways():
    ref = {"ref_answer_length_tokens": 12.0}
    assert detectors.length_drift([{**ref, "answer_length_tokens": 16.0}], 0.5) is None  # +33%
    assert detectors.length_drift([{**ref, "answer_length_tokens": 13.0}, {**ref, "answer_length_tokens": 19.0}],
                                  0.5) == 1  # +58%: rambling to the cap
    assert detectors.length_drift([{**ref, "answer_length_tokens": 5.0}], 0.5) == 0  # stops at once
    assert detectors.length_drift([{"answer_length_tokens": 50.0}], 0.5) is None  # no reference: nothing to say
    m = RewardHackingMonitor(RewardHackingSettings(signals=["length_drift"]), 4)
    m.update({"step": 4, **ref, "answer_length_tokens": 20.0})
    assert m.detail == "greedy answers are 20.0 tokens long against the reference's 12.0 (threshold 0.5 of it)"


def test_answer_drop_counts_from_the_reference_so_a_collapse_before_the_first_report_is_seen():
    ref = {"ref_answer_exact_rate": 0.8, "ref_answer_valid_rate": 1.0}
    collapsed_early = [{**ref, "answer_exact_rate": 0.3, "answer_valid_rate": 1.0}]
    assert detectors.answer_drop(collapsed_early, 0.2) == 0
    improving = [{**ref, "answer_exact_rate": 0.85, "answer_valid_rate": 1.0},
                 {**ref, "answer_exact_rate": 0.7, "answer_valid_rate": 1.0},   # 0.15 below the peak
                 {**ref, "answer_exact_rate": 0.7, "answer_valid_rate": 0.75}]  # valid answers broke
    assert detectors.answer_drop(improving, 0.2) == 2
    # Without the reference the running peak starts at the first report and misses the early collapse.
    assert detectors.answer_drop([{"answer_exact_rate": 0.3, "answer_valid_rate": 1.0}], 0.2) is None


def test_state_round_trips_with_the_reference_values():
    m = RewardHackingMonitor(RewardHackingSettings(signals=["answer_drop"]), 4)
    m.update({"step": 2, "ref_answer_exact_rate": 0.8, "answer_exact_rate": 0.75})
    restored = RewardHackingMonitor.from_state(m.settings, m.state())
    out = restored.update({"step": 4, "ref_answer_exact_rate": 0.8, "answer_exact_rate": 0.55})
    assert out["reward_hack_flag"] == 1 and restored.flagged_at_step == 4


@pytest.mark.parametrize("signal", ["length_drift", "answer_drop"])
def test_signals_that_read_probe_answers_are_refused_without_probes(signal):
    with pytest.raises(ValueError, match=f"reward_hacking.signals: {signal} read"):
        TrialSpec.model_validate({"data": {"source": "pairs.jsonl"}, "reward_hacking": {"signals": [signal]}})
    with pytest.raises(ValueError, match="num_probe > 0"):
        TrialSpec.model_validate({"data": {"source": "synthetic", "synthetic": {"num_probe": 0}},
                                  "reward_hacking": {"signals": [signal]}})
    assert TrialSpec.model_validate({"data": {"source": "synthetic"}, "reward_hacking": {"signals": [signal]}})
    # Switched off, it asks for nothing.
    assert TrialSpec.model_validate({"data": {"source": "pairs.jsonl"},
                                     "reward_hacking": {"enabled": False, "signals": [signal]}})


def test_unknown_signal_is_refused():
    with pytest.raises(ValueError, match="signals"):
        RewardHackingSettings(signals=["vibes"])


def test_the_default_is_the_health_rule_at_the_threshold_the_selection_benchmark_chose():
    """docs/sweeps.md's health calibration block (written by benchmarks/selection_regret.py) names the shipped threshold;
    the settings must say the same, and the health rule must be the default flag."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "sweeps.md").read_text()
    block = readme.split("<!-- health_calibration:begin -->", 1)[1].split("<!-- health_calibration:end -->", 1)[0]
    found = re.search(r"^Shipped default \(`trainables.config.HealthSettings`\): kl_per_token ([0-9.e+-]+),", block,
                      re.MULTILINE)
    assert found, "the calibration block names no default"
    settings = RewardHackingSettings()
    assert settings.enabled and settings.signals == ["health"]
    assert settings.health.kl_per_token == float(found.group(1))


def health_report(nll, ref_nll=0.3, ratio=1.0, trunc=0.0, ref_trunc=0.0, rep=0.0, ref_rep=0.0, step=10):
    return {"step": step, "gen_ref_nll_per_token": nll, "ref_gen_ref_nll_per_token": ref_nll,
            "gen_length_ratio": ratio, "gen_truncation_rate": trunc, "ref_gen_truncation_rate": ref_trunc,
            "gen_repeat_ngram_rate": rep, "ref_gen_repeat_ngram_rate": ref_rep}


def test_the_health_rule_reads_each_part_against_the_reference_and_names_what_failed():
    th = RewardHackingSettings().health
    far = {**health_report(0.3), "gen_kl_per_token": th.kl_per_token * 1.1}
    assert set(health.failed_parts(far, th)) == {"kl_per_token"}
    assert "sampled KL from the reference reached" in health.describe(far, th)
    assert health.failed_parts({**far, "gen_kl_per_token": th.kl_per_token * 0.9}, th) == {}
    assert health.failed_parts(health_report(0.3 + th.nll_rise * 0.9), th) == {}
    assert set(health.failed_parts(health_report(0.3 + th.nll_rise * 1.1), th)) == {"nll_rise"}
    assert set(health.failed_parts(health_report(0.3, ratio=1 + th.length_change + 0.1), th)) == {"length_change"}
    assert set(health.failed_parts(health_report(0.3, ratio=1 - th.length_change - 0.1), th)) == {"length_change"}
    # Rises over the reference's own rates, not absolute rates: a reference that truncates half is no flag.
    assert health.failed_parts(health_report(0.3, trunc=0.5, ref_trunc=0.5), th) == {}
    assert set(health.failed_parts(health_report(0.3, trunc=0.5 + th.truncation_rise + 0.05, ref_trunc=0.5), th)) \
        == {"truncation_rise"}
    assert set(health.failed_parts(health_report(0.3, rep=th.repeat_rise + 0.05), th)) == {"repeat_rise"}
    # A report without the generation evaluation (or a NaN from a diverged policy) is not judged.
    assert health.failed_parts({"step": 1, "gen_ref_nll_per_token": float("nan")}, th) == {}
    text = health.describe(health_report(2.3), th)
    assert "NLL of the policy's completions rose 2.00 nats/token" in text and f"threshold {th.nll_rise:g}" in text


def test_the_default_monitor_flags_degenerating_generations_and_the_flag_sticks():
    m = RewardHackingMonitor(RewardHackingSettings(), 4)
    out = [m.update(health_report(nll, step=10 * (i + 1))) for i, nll in enumerate([0.3, 0.35, 3.0, 0.4])]
    assert [o["reward_hack_flag"] for o in out] == [0, 0, 1, 1]
    assert m.flagged_at_step == 30 and out[-1]["reward_hack_signal"] == "health"
    assert "nats/token" in out[-1]["reward_hack_detail"]
