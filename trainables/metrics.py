"""What a trial reports: the `Report` callable's shape, and the metric names a sweep may rank trials
by, watch, or plot."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

# report(metrics, checkpoint_dir): called at every report step (Ray's tune.report, a printer, a list's append).
Report = Callable[[dict[str, Any], str | None], None]

PRIMARY_METRIC = "eval_rewards_accuracies"
# Held-out metrics in every report: TRL's eval keys ('/' -> '_') plus the drift probe (trainables.probes).
EVAL_METRICS = (
    "eval_loss", "eval_rewards_accuracies", "eval_rewards_margins", "eval_rewards_chosen", "eval_rewards_rejected",
    "eval_logps_chosen", "eval_logps_rejected", "eval_logits_chosen", "eval_logits_rejected", "eval_entropy",
    "eval_mean_token_accuracy", "eval_abs_logratio", "eval_abs_logratio_per_token", "eval_chosen_logratio_per_token",
    "eval_rejected_logratio_per_token",
)
# Bundled tasks only (data.source synthetic or arithmetic): probes with known answers.
ANSWER_METRICS = ("answer_exact_rate", "answer_valid_rate", "answer_length_tokens")
# The generation evaluation's (trainables.generation): health of the policy's own completions, and the reference's.
REF_PREFIX = "ref_"
HEALTH_METRICS = ("gen_truncation_rate", "gen_length_tokens", "gen_length_ratio", "gen_repeat_ngram_rate",
                  "gen_ref_nll_per_token", "gen_kl", "gen_kl_per_token")
# The reference's own figures (a policy equal to the reference has length ratio 1 and KL 0: not repeated).
REFERENCE_BASELINES = ("gen_truncation_rate", "gen_length_tokens", "gen_repeat_ngram_rate", "gen_ref_nll_per_token")


def reported_metrics(has_probes: bool, evaluation=None) -> set[str]:
    """Names a sweep may rank or watch trials by; `evaluation` (EvaluationSettings) adds the generation
    evaluation's health metrics and each reward function's eval_reward_<name> / eval_win_rate_<name>."""
    gen = reported_names(evaluation) if evaluation is not None else set()
    return set(EVAL_METRICS) | (set(ANSWER_METRICS) if has_probes else set()) | gen


def clean_metric_name(key: str) -> str:
    """'eval_rewards/accuracies' -> 'eval_rewards_accuracies' ('/' nests keys in Ray Tune results)."""
    return key.replace("/", "_")


def metric_suffix(name: str) -> str:
    """A reward's name as a metric suffix: letters, digits and underscores ('/' would nest it in Tune)."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_").lower() or "reward"


def is_function_spec(spec: str) -> bool:
    """'module:function' (not a reward model's directory that happens to hold a ':')."""
    return ":" in spec and not Path(spec).exists()


def reward_name(spec: str) -> str:
    """The metric suffix of an evaluation.reward_funcs entry, read without loading it: the function's name after
    ':', or a reward model's last path part."""
    return metric_suffix(spec.partition(":")[2] if is_function_spec(spec) else (Path(spec).name or spec))


def default_metric(reward_funcs: list[str]) -> str:
    """What a sweep ranks by when its YAML names no search.metric: the first reward function's win rate against
    the reference's completions where there is one (it sees what the model generates), else held-out pair
    accuracy."""
    return f"eval_win_rate_{reward_name(reward_funcs[0])}" if reward_funcs else PRIMARY_METRIC


def reported_names(settings) -> set[str]:
    """Every metric name a report carries from the generation evaluation (`settings`: its EvaluationSettings),
    rewards included (read by `reward_name`: nothing is loaded)."""
    names = set(HEALTH_METRICS) | {REF_PREFIX + k for k in REFERENCE_BASELINES}
    for spec in settings.reward_funcs:
        suffix = reward_name(spec)
        names |= {f"eval_reward_{suffix}", f"eval_win_rate_{suffix}", f"{REF_PREFIX}eval_reward_{suffix}"}
    return names
