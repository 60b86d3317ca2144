"""Are a trial's generations healthy? One label-free rule, read off the generation evaluation.

At every report `trainables.generation` completes held-out prompts greedily with the policy and, once, with the
reference model. The rule compares the two, per token, so it means the same on a 5-token answer and a 300-token
one and needs no label:

    kl_per_token     the policy's own sampled completions are more than t nats per token likelier under the policy
                     than under the reference (gen_kl_per_token, a sampled KL(policy || reference) per token): the
                     policy left the reference's neighbourhood - the distance DPO's beta is meant to bound
    nll_rise         the reference model finds the policy's completions less plausible than its own, by more than
                     t nats per token (gen_ref_nll_per_token - ref_gen_ref_nll_per_token): degenerate text,
                     a language the reference would not speak, answers pushed off the model's manifold
    length_change    the completions are longer or shorter than the reference's by more than t of its length
                     (|gen_length_ratio - 1|): rambling, or stopping at once
    truncation_rise  t more of the completions run to the token cap than the reference's did
    repeat_rise      t more of the completions' n-grams repeat an earlier one than in the reference's

A report is unhealthy when any part fires. The same rule is the reward-hacking flag (`reward_hacking.signals:
[health]`, the default), keeps a trial out of the sweet spot (`orchestrator.analysis`) and from promotion under
halving and ASHA (`orchestrator.schedulers`). Its default thresholds are calibrated by
`benchmarks/selection_regret.py` on one task and scored on another (docs/sweeps.md, "Choosing the trial").

What it cannot see: a fluent, well-formed answer that is wrong. A policy that answers "26 + 28 = 55" in the
reference's own words passes; only a reward function (evaluation.reward_funcs) or a task with known answers sees it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

REF = "ref_"
# What the rule reads from a report.
READS = ("gen_kl_per_token", "gen_ref_nll_per_token", "gen_length_ratio", "gen_truncation_rate", "gen_repeat_ngram_rate",
         REF + "gen_ref_nll_per_token", REF + "gen_truncation_rate", REF + "gen_repeat_ngram_rate")
PARTS = ("kl_per_token", "nll_rise", "length_change", "truncation_rise", "repeat_rise")


class Thresholds(Protocol):
    kl_per_token: float
    nll_rise: float
    length_change: float
    truncation_rise: float
    repeat_rise: float


def _get(report: Mapping[str, Any], key: str) -> float | None:
    v = report.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return None
    return float(v)


def measures(report: Mapping[str, Any]) -> dict[str, float]:
    """The rule's four quantities at one report (those it can compute from the report)."""
    out = {}
    kl = _get(report, "gen_kl_per_token")
    if kl is not None:
        out["kl_per_token"] = kl
    nll, ref_nll = _get(report, "gen_ref_nll_per_token"), _get(report, REF + "gen_ref_nll_per_token")
    if nll is not None and ref_nll is not None:
        out["nll_rise"] = nll - ref_nll
    ratio = _get(report, "gen_length_ratio")
    if ratio is not None:
        out["length_change"] = abs(ratio - 1.0)
    for part, key in (("truncation_rise", "gen_truncation_rate"), ("repeat_rise", "gen_repeat_ngram_rate")):
        now, ref = _get(report, key), _get(report, REF + key)
        if now is not None and ref is not None:
            out[part] = now - ref
    return out


def failed_parts(report: Mapping[str, Any], thresholds: Thresholds) -> dict[str, float]:
    """The parts of the rule this report fails, with their values; {} for a healthy (or unmeasured) report."""
    return {part: v for part, v in measures(report).items() if v > getattr(thresholds, part)}


def measured(report: Mapping[str, Any]) -> bool:
    return bool({"kl_per_token", "nll_rise"} & set(measures(report)))


def first_unhealthy(history: Sequence[Mapping[str, Any]], thresholds: Thresholds) -> int | None:
    """The index of the first unhealthy report, or None (reports without a generation evaluation are skipped)."""
    return next((i for i, m in enumerate(history) if failed_parts(m, thresholds)), None)


UNITS = {"kl_per_token": "nats/token", "nll_rise": "nats/token", "length_change": "of the reference's length", "truncation_rise": "of completions",
         "repeat_rise": "of n-grams"}
WORDS = {"kl_per_token": "the sampled KL from the reference reached",
         "nll_rise": "the reference model's NLL of the policy's completions rose",
         "length_change": "completion length changed by",
         "truncation_rise": "completions cut at the token cap rose by",
         "repeat_rise": "repeated n-grams rose by"}


def describe(report: Mapping[str, Any], thresholds: Thresholds) -> str:
    """The failed parts in words, e.g. 'the reference model's NLL of the policy's completions rose 1.9
    nats/token (threshold 0.5)'."""
    return "; ".join(f"{WORDS[p]} {v:.2f} {UNITS[p]} (threshold {getattr(thresholds, p):g})"
                     for p, v in failed_parts(report, thresholds).items())
