"""Analysis on constructed results: table, sweet spot, plots, drift exclusion."""

from __future__ import annotations

import pandas as pd
import pytest

from orchestrator.analysis import analyze
from orchestrator.records import COMPLETED, STOPPED, TrialRecord


def record(tid, beta, lr, accs, expected=4, flag=False, drift=0.1):
    steps = list(range(10, 10 * len(accs) + 1, 10))
    hist = pd.DataFrame({"step": steps, "eval_rewards_accuracies": accs, "eval_abs_logratio": [drift] * len(accs),
                         "reward_hack_flag": [float(flag)] * len(accs),
                         "reward_hack_signal": ["chosen_logp_drop" if flag else None] * len(accs)})
    return TrialRecord(trial_id=tid, params={"beta": beta, "learning_rate": lr}, history=hist,
                       expected_reports=expected)


@pytest.fixture
def records():
    return [
        record("a", 0.1, 1e-4, [0.6, 0.7, 0.8, 0.85]),
        record("b", 0.5, 1e-4, [0.6, 0.65, 0.7, 0.72]),
        record("c", 0.1, 1e-3, [0.8, 0.95, 0.97, 0.99], flag=True, drift=5.0),
        record("d", 0.5, 1e-3, [0.55]),  # stopped early
    ]


def test_table_statuses_best_and_plots(records, tmp_path):
    a = analyze(records, "eval_rewards_accuracies", "max", tmp_path)
    assert list(a.table["trial"]) == ["a", "b", "c", "d"]
    assert dict(zip(a.table["trial"], a.table["status"], strict=True)) == {
        "a": COMPLETED, "b": COMPLETED, "c": COMPLETED, "d": STOPPED}
    # c's 0.99 is flagged: never the best trial nor the sweet spot, and the summary says why.
    assert a.best["trial"] == "a" and a.best["eval_rewards_accuracies"] == 0.85
    # Compared at the common budget: d stopped after one report, so every cell is read at report 1.
    assert list(a.table["compared_report"].unique()) == [1]
    assert list(a.table["final_eval_rewards_accuracies"]) == [0.85, 0.72, 0.99, 0.55]
    assert "Sweet spot: beta=0.1, learning_rate=0.0001 -> eval_rewards_accuracies 0.6000" in a.summary
    assert "at report 1 of 4" in a.sweet_spot_line
    assert "Best single trial: beta=0.1, learning_rate=0.0001" in a.summary
    assert a.recommendation.startswith("Trials compared at report 1 of 4 (step 10)")
    assert "Use beta 0.1, learning rate 0.0001" in a.recommendation
    assert "Left out of the choice (1 of 4): beta 0.1, learning rate 0.001 (flagged by chosen_logp_drop)" \
        in a.recommendation
    assert "Flagged, so left out of the sweet spot and of promotion, 1/4 trial(s) (by signal: chosen_logp_drop 1)" \
        in a.summary
    assert pd.read_csv(a.table_path).shape[0] == 4
    for name in ("interaction", "heatmap", "learning_curves"):  # no gen_kl in these records: no frontier
        assert a.plots[name].is_file() and a.plots[name].stat().st_size > 10_000


def test_drifted_trials_are_left_out_of_the_sweet_spot(records, tmp_path):
    records[2] = record("c", 0.1, 1e-3, [0.8, 0.95, 0.97, 0.99], drift=5.0)  # not flagged, only far
    a = analyze(records, "eval_rewards_accuracies", "max", tmp_path, max_abs_logratio=1.4)
    assert a.best["trial"] == "a"
    assert "Left out of the sweet spot, policy more than 1.4 nats" in a.summary and "beta=0.1,learning_rate=0.001" in a.summary


def test_the_sweet_spot_is_compared_at_the_last_report_every_trial_reached(tmp_path):
    """Under halving the one trial that ran to the end is not weighed against the stopped trials' earlier values:
    all are read at the first rung, where the stopped cells were ahead."""
    recs = [record("x", 0.1, 1e-4, [0.9, 0.95, 0.99, 0.992]), record("y", 0.5, 1e-4, [0.996]),
            record("z", 0.5, 1e-3, [0.996]), record("w", 0.1, 1e-3, [0.5])]
    a = analyze(recs, "eval_rewards_accuracies", "max", tmp_path)
    assert a.budget.report == 1 and a.budget.of == 4 and a.budget.compared == 4
    assert a.sweet_spot.values == {"beta": 0.5, "learning_rate": 1e-4} and a.sweet_spot.mean == 0.996
    assert a.best["trial"] == "x"  # the adapter to take is still the trial that trained longest
    # Every trial completed: the comparison is at the end, as before.
    done = [record("x", 0.1, 1e-4, [0.5, 0.9]), record("y", 0.5, 1e-4, [0.95, 0.6])]
    b = analyze(done, "eval_rewards_accuracies", "max", tmp_path, )
    assert (b.budget.report, b.budget.of) == (2, 2) and "at report" not in b.sweet_spot_line
    assert "compared at report 2 (step 20), the end of every compared trial's training" in b.recommendation


def test_stopped_trials_rank_only_when_none_completed(tmp_path):
    recs = [record("x", 0.1, 1e-4, [0.9]), record("y", 0.5, 1e-4, [0.6, 0.7, 0.75, 0.8])]
    assert analyze(recs, "eval_rewards_accuracies", "max", tmp_path).best["trial"] == "y"
    recs = [record("x", 0.1, 1e-4, [0.9]), record("y", 0.5, 1e-4, [0.6])]
    assert analyze(recs, "eval_rewards_accuracies", "max", tmp_path).best["trial"] == "x"
    recs = [record("x", 0.1, 1e-4, [0.3, 0.2, 0.25, 0.1]), record("y", 0.5, 1e-4, [0.6, 0.5, 0.4, 0.3])]
    assert analyze(recs, "eval_rewards_accuracies", "min", tmp_path).best["trial"] == "x"


def test_ties_go_to_the_policy_closest_to_its_reference(tmp_path):
    recs = [record("far", 0.01, 1e-4, [0.6, 0.7, 0.8, 0.9], drift=0.9),
            record("near", 0.1, 1e-4, [0.6, 0.7, 0.8, 0.9], drift=0.3)]
    assert analyze(recs, "eval_rewards_accuracies", "max", tmp_path).best["trial"] == "near"


def test_diverged_trials_are_left_out_and_named(tmp_path):
    good = record("ok", 0.1, 1e-4, [0.6, 0.7, 0.8, 0.85])
    bad = record("nan", 0.5, 1e-2, [0.9, 0.95])
    bad.history["diverged"] = [0.0, 1.0]
    a = analyze([good, bad], "eval_rewards_accuracies", "max", tmp_path)
    assert dict(zip(a.table["trial"], a.table["status"], strict=True)) == {"ok": COMPLETED, "nan": "diverged"}
    assert a.best["trial"] == "ok"
    assert "Diverged (a NaN or Inf loss or metric; stopped and left out): beta=0.5,learning_rate=0.01" in a.summary


@pytest.mark.parametrize("error", [
    "TrialOutOfMemory at step 3: per_device_train_batch_size=16, max_length=64 ...",  # ours (trainables.trial)
    "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.",  # Ray's monitor
])
def test_out_of_memory_trials_are_marked_with_the_fix(tmp_path, error):
    good = record("ok", 0.1, 1e-4, [0.6, 0.7, 0.8, 0.85])
    oom = record("oom", 0.5, 1e-4, [0.6])
    oom.error = error
    other = record("bug", 0.5, 1e-3, [0.6])
    other.error = "ValueError: something else"
    a = analyze([good, oom, other], "eval_rewards_accuracies", "max", tmp_path)
    assert dict(zip(a.table["trial"], a.table["status"], strict=True)) == {
        "ok": COMPLETED, "oom": "out_of_memory", "bug": "failed"}
    assert "Out of memory: beta=0.5,learning_rate=0.0001. Lower dpo.per_device_train_batch_size" in a.summary


def replicated(effect) -> list[TrialRecord]:
    """3 x 3 beta x learning_rate, 3 seeds per cell; `effect(i, j)` is the cell's true accuracy."""
    import numpy as np

    rng = np.random.default_rng(0)
    recs = []
    for i, beta in enumerate((0.01, 0.1, 0.5)):
        for j, lr in enumerate((5e-5, 5e-4, 5e-3)):
            for seed in range(3):
                acc = effect(i, j) + rng.normal(0, 0.01)
                r = record(f"{i}{j}{seed}", beta, lr, [0.5, 0.6, 0.7, acc])
                r.params["dpo.seed"] = seed
                recs.append(r)
    return recs


def test_a_known_interaction_is_detected_and_explained(tmp_path):
    # The best learning rate moves with beta: high lr only works at high beta.
    a = analyze(replicated(lambda i, j: 0.9 - 0.15 * abs(i - j)), "eval_rewards_accuracies", "max", tmp_path)
    assert a.anova.method == "two-way ANOVA" and a.anova.interaction.p < 0.001
    assert "the best learning rate depends on beta" in a.summary
    assert "interaction is strong" in a.recommendation and "3 seeds" in a.recommendation
    assert a.plots["interaction_means"].is_file()
    assert a.knobs == ["beta", "learning_rate"]  # the seed is a replicate, not a knob


def test_no_interaction_is_not_reported_as_one(tmp_path):
    a = analyze(replicated(lambda i, j: 0.6 + 0.1 * i + 0.05 * j), "eval_rewards_accuracies", "max", tmp_path)
    assert a.anova.interaction.p > 0.05
    assert "no evidence that the best learning rate depends on beta" in a.summary
    assert a.sweet_spot.values == {"beta": 0.5, "learning_rate": 5e-3}


def test_metrics_shown_beside_the_ranked_one_are_never_knobs(tmp_path):
    recs = []
    for i, (beta, lr) in enumerate([(0.1, 1e-4), (0.5, 1e-4), (0.1, 1e-3), (0.5, 1e-3)]):
        r = record(str(i), beta, lr, [0.6 + 0.05 * i])
        r.history["answer_exact_rate"] = [0.2 + 0.1 * i]
        r.history["answer_length_tokens"] = [10.0 + i]
        recs.append(r)
    result = analyze(recs, "answer_exact_rate", "max", tmp_path)
    # Shown in the table (they vary from trial to trial), but the knobs are what was swept.
    assert {"eval_rewards_accuracies", "answer_length_tokens"} <= set(result.table.columns)
    assert result.knobs == ["beta", "learning_rate"]


def test_best_follows_the_mode(tmp_path):
    recs = [record("a", 0.1, 1e-4, [0.7, 0.5, 0.6]), record("b", 0.5, 1e-4, [0.9, 0.8, 0.85])]
    for r in recs:
        r.history["eval_loss"] = r.history["eval_rewards_accuracies"]
    table = analyze(recs, "eval_loss", "min", tmp_path).table.set_index("trial")
    assert table.loc["a", "best_eval_loss"] == 0.5 and table.loc["b", "best_eval_loss"] == 0.8


def test_the_report_shows_the_best_and_the_least_plausible_trials_completions_side_by_side(tmp_path):
    import json

    from orchestrator.report import write_report

    def rec(tid, acc, nll):
        ckpt = tmp_path / tid / "checkpoint_000003"
        ckpt.mkdir(parents=True)
        (ckpt / "completions.json").write_text(json.dumps(
            [{"step": 40, "prompt": f"Q{i}", "reference": f"ref {i}", "policy": f"{tid} says {i}"} for i in range(6)]))
        r = record(tid, {"a": 0.1, "b": 0.5, "c": 0.1}[tid], {"a": 1e-4, "b": 1e-4, "c": 1e-3}[tid], [acc] * 4)
        r.history["gen_ref_nll_per_token"] = nll
        r.best_checkpoint = str(ckpt)
        return r

    a = analyze([rec("a", 0.9, 0.5), rec("b", 0.7, 0.6), rec("c", 0.8, 4.0)], "eval_rewards_accuracies", "max",
                tmp_path / "analysis")
    assert [(label.split(" ")[0], trial) for label, trial, _ in a.completions] == [("best", "a"), ("least", "c")]
    _, md = write_report(a, tmp_path / "analysis", "t", {})
    text = md.read_text()
    assert "## What the trials generate" in text and "| Q0 | ref 0 | a says 0 | c says 0 |" in text
    assert "Q4" not in text  # the first four prompts only


def test_a_flag_raised_after_the_first_report_keeps_its_signal_when_progress_csv_is_the_fuller_history(tmp_path):
    # Halving resumes a trial on another worker; Ray's result.json can restart there (losing the early reports),
    # so the fuller progress.csv is read - whose header is the first report's keys. A signal named at a later
    # report is in result.json only; the record must still name it (not "flagged").
    from types import SimpleNamespace

    import pyarrow.fs

    from orchestrator.records import _history

    pd.DataFrame({"step": [8, 16, 24], "eval_rewards_accuracies": [0.6, 0.7, 0.8],
                  "reward_hack_flag": [0.0, 0.0, 1.0]}).to_csv(tmp_path / "progress.csv", index=False)
    after_resume = pd.DataFrame({"step": [24], "eval_rewards_accuracies": [0.8], "reward_hack_flag": [1.0],
                                 "reward_hack_signal": ["health"], "reward_hack_detail": ["kl 1.1/tok"]})
    result = SimpleNamespace(metrics_dataframe=after_resume, filesystem=pyarrow.fs.LocalFileSystem(),
                             path=str(tmp_path))
    history = _history(result)
    assert list(history["step"]) == [8, 16, 24]
    rec = TrialRecord(trial_id="t", params={}, history=history, expected_reports=4)
    assert rec.flag_signal == "health" and rec.flag_detail == "kl 1.1/tok"


def test_an_out_of_memory_trial_that_reported_is_left_out_everywhere(tmp_path):
    # It reported a high value before running out of memory: that value says nothing about the knobs, so it
    # is never the best trial or the sweet spot, and never feeds the ANOVA, the sensitivity or the means.
    from orchestrator import stats
    from orchestrator.eligibility import NOT_TRAINED, left_out
    from orchestrator.records import OUT_OF_MEMORY

    recs = [record("a", 0.1, 1e-4, [0.6, 0.7]), record("b", 0.5, 1e-4, [0.62, 0.66]),
            record("c", 0.1, 1e-3, [0.65, 0.7]), record("d", 0.5, 1e-3, [0.99, 0.99])]
    recs[3].error = "TrialOutOfMemory at step 3: per_device_train_batch_size=16 ..."
    assert recs[3].status == OUT_OF_MEMORY in NOT_TRAINED
    a = analyze(recs, "eval_rewards_accuracies", "max", tmp_path)
    assert a.best["trial"] != "d"
    assert (a.sweet_spot.values["beta"], a.sweet_spot.values["learning_rate"]) != (0.5, 1e-3)
    assert left_out(a.table, None)[a.table["trial"] == "d"].item() == "out of memory"
    rows, dropped = stats.usable(a.table, "eval_rewards_accuracies")
    assert "d" not in set(rows["trial"]) and dropped == 1
    assert a.anova is None or a.anova.n_left_out == 1
    assert "out of memory" in a.summary
    assert [s for s in a.sensitivity if s[0] == "learning_rate"]  # computed on the three that trained


def test_the_swept_keys_are_the_knobs_and_aliases_of_one_field_are_refused(tmp_path):
    from orchestrator.config import SweepConfig
    from orchestrator.preflight import colliding_keys
    from trainables.params import canonical_param_key, canonical_params

    assert canonical_param_key("dpo.beta") == canonical_param_key("beta") == "beta"
    assert canonical_param_key("lora.r") == "lora.r" and canonical_param_key("nonsense") is None
    assert canonical_params({"dpo.learning_rate": 1e-4, "lora.r": 8}) == {"learning_rate": 1e-4, "lora.r": 8}
    problems = colliding_keys(SweepConfig.model_validate(
        {"search": {"space": {"beta": {"grid": [0.1, 0.2]}, "dpo.beta": {"grid": [0.3]}}}}).search.space)
    assert problems == ["search.space: 'beta' and 'dpo.beta' both set dpo.beta; keep one of them"]
    # With the swept keys known, a varying column that is not one of them is never taken for a knob.
    recs = [record("a", 0.1, 1e-4, [0.6]), record("b", 0.5, 1e-4, [0.7])]
    recs[1].params["lora.dropout"] = 0.1  # e.g. a column from an older trial's config
    recs[0].params["lora.dropout"] = 0.0
    a = analyze(recs, "eval_rewards_accuracies", "max", tmp_path, swept=["beta", "learning_rate"])
    assert a.knobs == ["beta"]
