"""Cost accounting on constructed records: sums that match Ray's own per-trial times, and savings that
follow from the steps each trial ran and would have run."""

from __future__ import annotations

import pandas as pd
import pytest

from orchestrator.costs import sweep_cost
from orchestrator.records import COMPLETED, STOPPED, TrialRecord


def record(tid: str, reports: int, expected: int = 4, steps_per_report: int = 10, s_per_step: float = 0.5):
    steps = [steps_per_report * (i + 1) for i in range(reports)]
    history = pd.DataFrame({"step": steps, "time_total_s": [s * s_per_step for s in steps],
                            "tokens_seen": [s * 1000.0 for s in steps]})
    return TrialRecord(trial_id=tid, params={"beta": 0.1}, history=history, expected_reports=expected)


def test_the_sweep_sums_what_ray_timed_and_projects_what_stopping_saved():
    records = [record("done", 4), record("cut", 1), record("cut-later", 3, s_per_step=1.0)]
    assert [r.status for r in records] == [COMPLETED, STOPPED, STOPPED]
    cost = sweep_cost(records, cpu_per_trial=2, gpu_per_trial=0)
    # Ray's time_total_s at each trial's last report, summed.
    assert cost.trial_seconds == pytest.approx(20 + 5 + 30)
    assert cost.device == "CPU" and cost.device_hours == pytest.approx(55 * 2 / 3600)
    assert (cost.steps, cost.full_steps, cost.saved_steps) == (40 + 10 + 30, 120, 40)
    # Each stopped trial projected at its own seconds per step: 30 more steps at 0.5 s, 10 more at 1 s.
    assert cost.saved_seconds == pytest.approx(15 + 10)
    assert cost.tokens == pytest.approx(80_000)
    text = cost.describe()
    assert "55 trial-seconds" in text and "80 optimizer steps (67% of the 120" in text and "saved 40 steps" in text


def test_gpu_hours_count_each_packed_trials_share_and_the_shared_reference_is_accounted():
    cost = sweep_cost([record("a", 4), record("b", 4)], cpu_per_trial=4, gpu_per_trial=0.25, reference_seconds=12.0)
    assert cost.device == "GPU" and cost.device_hours == pytest.approx(2 * 20 * 0.25 / 3600)
    assert cost.saved_steps == 0 and cost.saved_seconds == 0
    assert cost.reference_saved_seconds == pytest.approx(12.0)  # one pass instead of two
    metrics = cost.metrics()
    assert metrics["cost.gpu_hours"] == pytest.approx(cost.device_hours) and metrics["cost.reference_seconds"] == 12.0
    reused = sweep_cost([record("a", 4), record("b", 4)], 4, 0.25, reference_seconds=12.0, reference_reused=True)
    assert reused.metrics()["cost.reference_seconds"] == 0.0 and reused.reference_saved_seconds == pytest.approx(24.0)
    assert "reused from an earlier sweep" in reused.describe()


def test_halving_promotes_only_what_the_analysis_could_pick():
    from orchestrator.eligibility import eligible
    from orchestrator.schedulers import halving_rungs

    m = "eval_rewards_accuracies"
    assert eligible({m: 0.9, "eval_abs_logratio": 0.3}, m, 1.4)
    assert not eligible({m: 1.0, "eval_abs_logratio": 7.6}, m, 1.4)  # drifted: left out of the sweet spot
    assert not eligible({m: 1.0, "reward_hack_flag": 1.0}, m, None)  # flagged
    assert not eligible({m: float("nan")}, m, None) and not eligible({}, m, None)
    assert halving_rungs(9, 1, 8, 3) == [(1, 9), (3, 3), (8, 1)] and halving_rungs(2, 1, 4, 3) == [(1, 2), (3, 1)]


def test_tokens_per_step_counts_each_pair_twice_over_its_prompt_cut_at_max_length():
    import datasets

    from trainables.config import TrialSpec
    from trainables.trainer import tokens_per_step

    spec = TrialSpec.model_validate({"dpo": {"max_length": 5, "per_device_train_batch_size": 4,
                                             "gradient_accumulation_steps": 2}})
    ds = datasets.Dataset.from_dict({"prompt_ids": [[1, 2], [1, 2, 3]], "chosen_ids": [[4], [4, 5, 6]],
                                     "rejected_ids": [[7, 8], [9]]})
    # Pair 1: min(2+1, 5) + min(2+2, 5) = 7; pair 2: min(3+3, 5) + min(3+1, 5) = 9; batch 4 x 2.
    assert tokens_per_step(ds, spec) == 8 * (7 + 9) / 2
    assert tokens_per_step(ds.select([1, 1, 0]), spec) == pytest.approx(8 * (9 + 9 + 7) / 3)  # a selection's rows
