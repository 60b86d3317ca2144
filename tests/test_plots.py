"""The plots, read back from their Figures: which knob is on which axis, on which scale, with which labels
and marks; and the PNGs the analysis ships."""

from __future__ import annotations

import numpy as np
import pandas as pd
from test_stats import METRIC, grid, interacting

from orchestrator import anova, plots
from orchestrator.analysis import analyze
from orchestrator.records import TrialRecord

KNOBS = ["beta", "learning_rate"]


def marked(table: pd.DataFrame) -> dict:
    return {**table.iloc[0][KNOBS].to_dict(), METRIC: float(table[METRIC].iloc[0])}


def test_interaction_plot_puts_the_learning_rate_across_on_a_log_axis_one_line_per_beta():
    t = grid(interacting, reps=1)
    t.loc[0, "reward_hacking"] = "drift_per_token"
    (ax,) = plots.figure_interaction(t, KNOBS, METRIC, marked(t)).axes
    assert ax.get_xlabel() == "learning_rate" and ax.get_xscale() == "log"
    assert ax.get_ylabel() == f"{METRIC} (last report)"
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["beta=0.05", "beta=0.1", "beta=0.5", "sweet spot"]
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [3, 3, 3]  # one point per learning rate
    flagged = [c for c in ax.collections if c.get_offsets().shape[0] == 1 and c.get_edgecolor().size]
    assert flagged, "the flagged trial and the sweet spot are marked"


def test_heatmap_has_beta_up_and_the_learning_rate_across_with_every_cell_labelled():
    t = grid(interacting, reps=2)
    (ax, _colorbar) = plots.figure_heatmap(t, KNOBS, METRIC, marked(t)).axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("learning_rate", "beta")
    assert [x.get_text() for x in ax.get_xticklabels()] == ["1e-05", "0.0001", "0.001"]
    assert [y.get_text() for y in ax.get_yticklabels()] == ["0.05", "0.1", "0.5"]
    assert len(ax.texts) == 9 and len(ax.patches) == 1  # every cell's mean, and the sweet spot's box


def test_a_seed_axis_is_never_a_knob_of_any_plot(tmp_path):
    """num_samples > 1 adds a `seed` axis to the space; its values are replicates, averaged, never plotted."""
    rng = np.random.default_rng(0)
    records = [TrialRecord(trial_id=f"t{b}{lr}{s}", params={"beta": b, "learning_rate": lr, "seed": s},
                           history=pd.DataFrame({"step": [5, 10], METRIC: rng.uniform(0.5, 0.9, 2)}), expected_reports=2)
               for b in (0.1, 0.5) for lr in (1e-4, 1e-3) for s in (0, 1, 2)]
    a = analyze(records, METRIC, "max", tmp_path)
    assert a.knobs == KNOBS and a.anova.replicates == (3, 3)
    (ax, _colorbar) = plots.figure_heatmap(a.table, a.knobs, METRIC, None).axes
    assert {ax.get_xlabel(), ax.get_ylabel()} == set(KNOBS)
    (inter,) = plots.figure_interaction(a.table, a.knobs, METRIC, None).axes
    assert "seed" not in inter.get_xlabel() and all("seed" not in t.get_text() for t in inter.get_legend().get_texts())
    assert set(a.plots) == {"interaction", "heatmap", "main_effects", "interaction_means", "learning_curves"}
    for path in a.plots.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


def test_main_effects_and_interaction_means_show_error_bars_per_knob_value():
    t = grid(interacting, reps=3)
    fig = plots.figure_main_effects(t, METRIC, KNOBS)
    assert [ax.get_xlabel() for ax in fig.axes] == KNOBS and fig.axes[0].get_ylabel() == f"{METRIC} (mean ± SE)"
    assert [ax.get_xscale() for ax in fig.axes] == ["log", "log"]  # beta 0.05-0.5 spans a decade too
    narrow = plots.figure_main_effects(t.assign(beta=t["beta"].map({0.05: 0.1, 0.1: 0.2, 0.5: 0.3})), METRIC, KNOBS)
    assert [ax.get_xscale() for ax in narrow.axes] == ["linear", "log"]
    (ax,) = plots.figure_interaction_means(t, METRIC, "beta", "learning_rate", anova.two_way_anova(t, METRIC)).axes
    assert ax.get_xlabel() == "learning_rate" and ax.get_xscale() == "log" and ax.get_ylabel() == METRIC
    assert "interaction p" in ax.get_title() and len(ax.get_legend().get_texts()) == 3


def test_plots_with_nothing_to_show_are_not_drawn():
    t = grid(interacting, reps=3)
    one_beta = t[t["beta"] == 0.1]
    assert plots.figure_interaction_means(one_beta, METRIC, "beta", "learning_rate") is None
    assert plots.figure_main_effects(one_beta.assign(learning_rate=1e-4), METRIC, KNOBS) is None
    assert plots.figure_parallel_coordinates(t, METRIC, KNOBS) is None  # two knobs: the heatmap says it
    assert plots.figure_heatmap(t, ["beta"], METRIC, None) is None
    t["label_smoothing"] = np.tile([0.0, 0.1, 0.2], len(t) // 3)
    (ax, _colorbar) = plots.figure_parallel_coordinates(t, METRIC, [*KNOBS, "label_smoothing"]).axes
    assert [x.get_text() for x in ax.get_xticklabels()] == [*KNOBS, "label_smoothing", METRIC]


def test_a_decade_of_learning_rates_is_drawn_on_a_log_axis():
    assert plots.log_like(pd.Series([1e-4, 3e-4, 1e-3]))  # the smollm2 example's grid: a decade, geometric
    assert plots.log_like(pd.Series([5e-5, 5e-4, 5e-3]))
    assert not plots.log_like(pd.Series([0.1, 0.5]))
    assert not plots.log_like(pd.Series(["sigmoid", "robust"]))
    assert not plots.log_like(pd.Series([0.0, 0.1, 0.2]))


def test_a_sweep_where_no_trial_reported_draws_what_it_can_without_raising(tmp_path):
    # Found on the first GPU run: every trial of a batch-size sweep failed, and laying out the interaction
    # plot's empty log axis (8 and 4096 span a decade) raised inside the analysis, losing the sweep's summary.
    t = pd.DataFrame({"per_device_train_batch_size": [8, 4096], METRIC: [np.nan, np.nan],
                      "status": ["error", "out_of_memory"], "reward_hacking": ["", ""]})
    knobs = ["per_device_train_batch_size"]
    assert plots.figure_interaction(t, knobs, METRIC, None) is None
    drawn = plots.draw_all([], t, knobs, METRIC, None, None, tmp_path)
    assert drawn == {"learning_curves": tmp_path / "learning_curves.png"} and drawn["learning_curves"].is_file()


def test_the_frontier_plots_the_metric_against_the_sampled_kl_with_flagged_trials_and_the_sweet_spot():
    t = grid(interacting, reps=1)
    t["gen_kl"] = np.linspace(0.01, 5.0, len(t))
    t["gen_nll_rise"] = np.linspace(0.0, 2.0, len(t))
    t["gen_kl_per_token"] = np.linspace(0.0, 0.9, len(t))
    t.loc[len(t) - 1, "reward_hacking"] = "health"
    (ax,) = plots.figure_frontier(t, KNOBS, METRIC, marked(t)).axes
    assert ax.get_xlabel().startswith("sampled KL") and ax.get_ylabel() == f"{METRIC} (last report)"
    assert [x.get_text() for x in ax.get_legend().get_texts()] == ["healthy", "flagged (left out)", "sweet spot"]
    assert len(ax.texts) == len(t)  # every trial labelled with its knobs
    # The heatmap carries each cell's health beside its metric.
    (hm, _colorbar) = plots.figure_heatmap(t, KNOBS, METRIC, marked(t)).axes
    assert all("/tok, nll " in text.get_text() for text in hm.texts)
    assert plots.figure_frontier(t.drop(columns="gen_kl"), KNOBS, METRIC, None) is None
