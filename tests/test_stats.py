"""Statistics behind the sweep's answer, on constructed results tables with a known structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestrator import anova, stats, sweet_spot
from orchestrator.recommendation import recommendation

METRIC = "eval_rewards_accuracies"
BETAS, LRS = [0.05, 0.1, 0.5], [1e-5, 1e-4, 1e-3]


def grid(effect, reps: int, seed: int = 0, sd: float = 0.02, betas=BETAS, lrs=LRS, **extra) -> pd.DataFrame:
    """A beta x learning_rate results table: metric = effect(i, j) + N(0, sd) for beta index i, lr index j."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, beta in enumerate(betas):
        for j, lr in enumerate(lrs):
            for r in range(reps):
                rows.append({"trial": f"t{len(rows)}", "beta": beta, "learning_rate": lr, "seed": r,
                             "status": "completed", "reports": 4, METRIC: effect(i, j) + rng.normal(0, sd),
                             "reward_hacking": "", **{k: f(i, j) for k, f in extra.items()}})
    return pd.DataFrame(rows)


def interacting(i, j):  # the best learning rate moves with beta: the diagonal is best
    return 0.9 - 0.1 * abs(i - j)


def additive(i, j):
    return 0.6 + 0.05 * i + 0.08 * j


def multiplicative(i, j):  # non-additive in the one form Tukey's test looks for
    return 0.2 * (i + 1) * (j + 1)


# ---------------------------------------------------------------------------------------------- ANOVA

def test_replicated_interaction_is_found_by_full_anova():
    r = anova.two_way_anova(grid(interacting, reps=4), METRIC)
    assert r.method == anova.FULL_ANOVA and r.replicates == (4, 4) and r.n_used == 36 and r.n_left_out == 0
    assert r.interaction.p < 0.01 and r.interaction.df == 4 and r.df_error == 27
    assert 0 < r.interaction.partial_eta_sq <= 1
    text = r.describe()
    assert "beta x learning rate interaction: F=" in text and "4 replicates per cell" in text
    assert "the best learning rate depends on beta" in text


def test_replicated_additive_effects_show_no_interaction():
    r = anova.two_way_anova(grid(additive, reps=4, seed=1), METRIC)
    assert r.method == anova.FULL_ANOVA
    assert r.interaction.p > 0.05
    assert r.terms["beta"].p < 0.01 and r.terms["learning_rate"].p < 0.01  # the main effects are real
    assert "no evidence" in r.describe()


def test_type2_matches_statsmodels_anova_lm_on_a_complete_grid():
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    t = grid(interacting, reps=3, seed=2)
    ref = anova_lm(ols(f"{METRIC} ~ C(beta) * C(learning_rate)", t).fit(), typ=2)
    r = anova.two_way_anova(t, METRIC)
    for term, row in zip(["beta", "learning_rate", "beta x learning_rate"], ref.index[:3], strict=True):
        assert r.terms[term].f == pytest.approx(ref.loc[row, "F"])
        assert r.terms[term].p == pytest.approx(ref.loc[row, "PR(>F)"])


def test_failed_diverged_and_missing_cells_are_left_out_and_counted():
    t = grid(interacting, reps=3)
    cell = (t["beta"] == 0.5) & (t["learning_rate"] == 1e-3)
    t.loc[cell, "status"] = ["failed", "diverged", "diverged"]  # the whole cell is gone
    t.loc[0, METRIC] = np.nan
    r = anova.two_way_anova(t, METRIC)
    assert r.method == anova.FULL_ANOVA and r.n_left_out == 4 and r.n_used == 23
    assert r.interaction.df == 3  # 4 interaction df less the empty cell
    assert "4 trial(s) left out" in r.describe()


def test_single_replicate_multiplicative_structure_is_found_by_tukey():
    r = anova.two_way_anova(grid(multiplicative, reps=1), METRIC)
    assert r.method == anova.TUKEY and r.replicates == (1, 1)
    assert r.interaction.df == 1 and r.df_error == 3  # (3-1)(3-1) - 1
    assert r.interaction.p < 0.01
    assert "one trial per cell" in r.describe()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_replicate_additive_structure_is_not_flagged_by_tukey(seed):
    r = anova.two_way_anova(grid(additive, reps=1, seed=seed), METRIC)
    assert r.method == anova.TUKEY and r.interaction.p > 0.05


def test_single_replicate_with_a_missing_cell_falls_back_to_main_effects():
    t = grid(additive, reps=1).iloc[1:]
    r = anova.two_way_anova(t, METRIC)
    assert r.method == anova.ADDITIVE and r.interaction is None and "incomplete grid" in r.reason
    assert "not testable" in r.describe()


@pytest.mark.parametrize("make, reason", [
    (lambda: grid(additive, reps=2, betas=[0.1]), "only one value of beta (0.1)"),
    (lambda: grid(additive, reps=2).assign(**{METRIC: np.nan}), "only 0 trial(s) with a finite"),
    (lambda: grid(additive, reps=2).drop(columns="learning_rate"), "no column learning_rate"),
    (lambda: grid(additive, reps=1, betas=[0.1, 0.2], lrs=[1e-4, 1e-3]).iloc[1:], "too few to separate"),
])
def test_degenerate_tables_give_a_reason_not_an_exception(make, reason):
    r = anova.two_way_anova(make(), METRIC)
    assert r.method is None and reason in r.reason and r.interaction is None
    assert "not estimated" in r.describe()


# ---------------------------------------------------------------------------------------------- sensitivity

def test_sensitivity_ranks_a_knob_with_an_effect_above_one_without():
    t = grid(lambda i, j: 0.5 + 0.15 * i, reps=2, sd=0.01, lrs=[1e-4, 1e-3])
    t["label_smoothing"] = np.tile([0.0, 0.1], len(t) // 2)  # no effect at all
    t["num_train_epochs"] = 1  # one value: left out
    ranked = anova.sensitivity(t, METRIC, ["learning_rate", "beta", "label_smoothing", "num_train_epochs"])
    assert ranked[0][0] == "beta" and ranked[0][1] > 0.9
    assert "num_train_epochs" not in dict(ranked) and dict(ranked)["label_smoothing"] < 0.05
    assert stats.swept_knobs(t, METRIC) == ["beta", "learning_rate", "label_smoothing"]  # seed is a replicate


# ---------------------------------------------------------------------------------------------- sweet spot

B4, L4 = [0.01, 0.05, 0.1, 0.5], [1e-5, 1e-4, 1e-3, 1e-2]
SPIKE = (0.01, 1e-2)  # the single best cell, alone among poor ones
PLATEAU = {(0.1, 1e-5): 0.90, (0.5, 1e-5): 0.905, (0.1, 1e-4): 0.895, (0.5, 1e-4): 0.90}


def landscape(i, j):
    key = (B4[i], L4[j])
    if key == SPIKE:
        return 0.92
    if key in {(0.01, 1e-3), (0.05, 1e-2)}:
        return 0.4
    return PLATEAU.get(key, 0.6)


def test_sweet_spot_prefers_a_broad_plateau_over_a_lone_spike():
    t = grid(landscape, reps=1, sd=0.0, betas=B4, lrs=L4)
    s = sweet_spot.robust_sweet_spot(t, METRIC, "max", ["beta", "learning_rate"])
    assert tuple(s.values.values()) == (0.5, 1e-5)  # a corner of the plateau with two plateau neighbours
    assert s.mean == pytest.approx(0.905) and s.score == pytest.approx((2 * 0.905 + 0.90 + 0.90) / 4)
    assert s.n == 1 and s.se is None and s.win_rate is None
    assert "single trial per cell, no seeds: the confidence is from neighbours only" in s.confidence
    assert tuple(s.runner_up.values()) in PLATEAU
    assert t[METRIC].idxmax() == t.index[(t["beta"] == SPIKE[0]) & (t["learning_rate"] == SPIKE[1])][0]


def test_sweet_spot_honours_exclude():
    t = grid(landscape, reps=1, sd=0.0, betas=B4, lrs=L4)
    exclude = (t["beta"] == 0.5) & (t["learning_rate"] == 1e-5)  # e.g. drifted from the reference
    s = sweet_spot.robust_sweet_spot(t, METRIC, "max", ["beta", "learning_rate"], exclude=exclude)
    assert tuple(s.values.values()) in PLATEAU and tuple(s.values.values()) != (0.5, 1e-5)
    assert sweet_spot.robust_sweet_spot(t, METRIC, "max", ["beta", "learning_rate"],
                                   exclude=pd.Series(True, index=t.index)) is None
    with pytest.raises(ValueError, match="knobs: need one or more columns of the results table, got \\['lr'\\]"):
        sweet_spot.robust_sweet_spot(t, METRIC, "max", ["lr"])


def test_sweet_spot_mode_min_and_a_diverged_neighbour_counts_as_the_worst_cell():
    t = grid(lambda i, j: 1.0 - landscape(i, j), reps=1, sd=0.0, betas=B4, lrs=L4)  # a loss: lower is better
    assert tuple(sweet_spot.robust_sweet_spot(t, METRIC, "min", ["beta", "learning_rate"]).values.values()) == (0.5, 1e-5)
    t.loc[(t["beta"] == 0.5) & (t["learning_rate"] == 1e-4), ["status", METRIC]] = ["diverged", np.nan]
    s = sweet_spot.robust_sweet_spot(t, METRIC, "min", ["beta", "learning_rate"])
    assert tuple(s.values.values()) == (0.1, 1e-5)  # the old pick now sits next to a cliff


def test_sweet_spot_with_replicates_reports_se_and_a_bootstrap_win_rate():
    t = grid(interacting, reps=4, seed=3, sd=0.01)
    t.loc[(t["beta"] == 0.1) & (t["learning_rate"] == 1e-4), METRIC] += 0.1  # the middle of the diagonal
    s = sweet_spot.robust_sweet_spot(t, METRIC, "max", ["beta", "learning_rate"])
    assert s.values == {"beta": 0.1, "learning_rate": 1e-4} and s.n == 4
    assert s.se is not None and 0 < s.se < 0.01
    assert s.win_rate is not None and s.win_rate > 0.9
    assert "more than 2 SE behind: a clear lead" in s.confidence and "bootstrap" in s.confidence
    assert set(s.cells.columns) >= {"beta", "learning_rate", "mean", "score", "n"} and len(s.cells) == 9


# ---------------------------------------------------------------------------------------------- recommendation

def degrading_table() -> pd.DataFrame:
    """lr 1e-2 wrecks the policy at every beta; the best clean cell is beta 0.1, lr 1e-4."""
    lrs = [1e-5, 1e-4, 1e-3, 1e-2]
    return grid(lambda i, j: 0.95 - 0.05 * abs(i - 1) - 0.05 * abs(j - 1) - 0.2 * (j == 3), reps=3, seed=4,
                sd=0.01, lrs=lrs, answer_exact_rate=lambda i, j: 0.05 if j == 3 else 0.9)


def test_recommendation_names_the_values_the_degrading_learning_rate_and_the_interaction():
    t = degrading_table()
    knobs = ["beta", "learning_rate"]
    s = sweet_spot.robust_sweet_spot(t, METRIC, "max", knobs)
    result = anova.two_way_anova(t, METRIC)
    text = recommendation(t, METRIC, "max", knobs, s, result)
    assert text.startswith("Use beta 0.1, learning rate 0.0001: eval rewards accuracies 0.9")
    assert "3 seeds" in text
    assert "Learning rate at or above 0.01 degraded answer exact rate at every beta tried" in text
    assert "(it fell to 0.05, against 0.9 at best)" in text
    assert "beta x learning rate interaction" in text
    assert "Beta" not in text  # no beta value degrades at every learning rate
    without = recommendation(t.drop(columns="answer_exact_rate"), METRIC, "max", knobs, s, result)
    assert "Learning rate at or above 0.01 left eval rewards accuracies much worse at every beta tried" in without


def test_recommendation_without_degradation_or_seeds_says_so():
    t = grid(lambda i, j: 0.8 + 0.01 * i + 0.01 * j, reps=1, seed=1, sd=0.002)  # small effects: nothing degrades
    s = sweet_spot.robust_sweet_spot(t, METRIC, "max", ["beta", "learning_rate"])
    text = recommendation(t, METRIC, "max", ["beta", "learning_rate"], s, anova.two_way_anova(t, METRIC))
    assert "Use beta 0.5, learning rate 0.001" in text and "one trial" in text
    assert "degraded" not in text and "much worse" not in text and "No evidence of a beta x learning rate interaction" in text
    assert "Repeat the best few cells with 2-3 seeds" in text
    assert "no recommendation" in recommendation(t, METRIC, "max", ["beta"], None)


def test_recommendation_reports_a_learning_rate_that_diverged_everywhere():
    t = degrading_table()
    t.loc[t["learning_rate"] == 1e-2, ["status", METRIC, "answer_exact_rate"]] = ["diverged", np.nan, np.nan]
    s = sweet_spot.robust_sweet_spot(t, METRIC, "max", ["beta", "learning_rate"])
    text = recommendation(t, METRIC, "max", ["beta", "learning_rate"], s)
    assert "Learning rate at or above 0.01 diverged in every trial." in text


def test_a_metric_that_scores_every_trial_the_same_is_no_clear_lead():
    # Seen as a new user: a win rate of 0.5 in every trial (policy and reference tied everywhere) was called
    # "the gap is infx the spread: a clear lead".
    t = grid(lambda i, j: 0.5, reps=1, sd=0.0)
    s = sweet_spot.robust_sweet_spot(t, METRIC, "max", ["beta", "learning_rate"])
    text = recommendation(t, METRIC, "max", ["beta", "learning_rate"], s, None)
    assert "does not separate the trials" in text and "clear lead" not in text and "inf" not in text


def test_near_ties_within_the_held_out_noise_go_to_the_cell_closest_to_the_reference():
    """Pair accuracy saturates: 0.99 on 128 pairs is not distinguishable from 0.98, and the trial that got there
    by moving 5x further from the reference is the riskier one."""
    t = pd.DataFrame({"beta": [0.1, 0.1], "learning_rate": [1e-4, 1e-3], METRIC: [0.98, 0.99], "gen_kl": [0.1, 0.5],
                      "status": "completed"})
    knobs = ["beta", "learning_rate"]
    plain = sweet_spot.robust_sweet_spot(t, METRIC, "max", knobs)
    tie = sweet_spot.robust_sweet_spot(t, METRIC, "max", knobs, noise_n=128, tie_se=1.0, closeness="gen_kl",
                                  tie_break="closest")
    assert plain.values == {"beta": 0.1, "learning_rate": 1e-3}
    assert tie.values == {"beta": 0.1, "learning_rate": 1e-4} and tie.runner_up == {"beta": 0.1, "learning_rate": 1e-3}
    assert "within the held-out noise" in tie.confidence and "gen_kl 0.1" in tie.confidence
    # The default keeps the neighbourhood average's pick and says that it is a near tie.
    said = sweet_spot.robust_sweet_spot(t, METRIC, "max", knobs, noise_n=128, tie_se=1.0, closeness="gen_kl")
    assert said.values == plain.values
    assert "a near tie with beta 0.1, learning rate 0.0001 (0.98), kept by the best neighbourhood average" in \
        said.confidence
    # Measured on many more pairs the same gap is real; and tie_se 0 turns near ties off.
    assert sweet_spot.robust_sweet_spot(t, METRIC, "max", knobs, noise_n=100_000, tie_se=1.0,
                                   closeness="gen_kl", tie_break="closest").values == plain.values
    assert sweet_spot.robust_sweet_spot(t, METRIC, "max", knobs, noise_n=128, tie_se=0, closeness="gen_kl").values == \
        plain.values
    # The cells' own means are compared, not their neighbourhood averages (which share neighbours and shrink the
    # gap to a third here): 0.96 against 1.00 on 128 pairs, some 2.6 SE of a difference, is no tie.
    far = t.assign(**{METRIC: [0.96, 1.00]})
    assert sweet_spot.robust_sweet_spot(far, METRIC, "max", knobs, noise_n=128, tie_se=1.0, closeness="gen_kl",
                                   tie_break="closest").values == {"beta": 0.1, "learning_rate": 1e-3}


def test_flagged_neighbours_count_as_cliffs():
    t = pd.DataFrame({"beta": [0.1] * 3 + [0.5] * 3, "learning_rate": [1e-4, 1e-3, 1e-2] * 2,
                      METRIC: [0.80, 0.82, 0.99, 0.79, 0.80, 0.60], "status": "completed"})
    flagged = (t["learning_rate"] == 1e-2) & (t["beta"] == 0.1)
    s = sweet_spot.robust_sweet_spot(t, METRIC, "max", ["beta", "learning_rate"], exclude=flagged)
    assert s.values == {"beta": 0.1, "learning_rate": 1e-3}  # merely left out, the collapse is no neighbour at all
    s = sweet_spot.robust_sweet_spot(t, METRIC, "max", ["beta", "learning_rate"], exclude=flagged, cliffs=flagged)
    assert s.values == {"beta": 0.1, "learning_rate": 1e-4}  # as a cliff, it weighs on the cell beside it
