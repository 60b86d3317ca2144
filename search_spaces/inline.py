"""A search space declared in the sweep YAML, turned into Tune domains.

    search:
      space:
        beta: {grid: [0.05, 0.1, 0.2]}
        learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
        num_train_epochs: {choice: [1, 2]}
        label_smoothing: {uniform: [0.0, 0.2]}
        dpo.seed: 3                      # a plain value fixes the key for every trial
"""

from __future__ import annotations

from typing import Any

from ray import tune

KINDS = ("grid", "choice", "uniform", "loguniform")


def domain_from_yaml(key: str, spec: Any) -> tuple[Any, list[str]]:
    """(Tune domain or constant, problems) for one declared key."""
    if not isinstance(spec, dict):
        return spec, []
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        return None, [(f"search.space.{key}: expected one of {{{', '.join(f'{k}: ...' for k in KINDS)}}} "
                      f"or a plain value, got {spec!r}")]
    kind, arg = next(iter(spec.items()))
    if kind in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            return None, [f"search.space.{key}.{kind}: expected a non-empty list, got {arg!r}"]
        return (tune.grid_search(arg) if kind == "grid" else tune.choice(arg)), []
    if (not isinstance(arg, list) or len(arg) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in arg)):
        return None, [f"search.space.{key}.{kind}: expected [lower, upper] numbers, got {arg!r}"]
    lo, hi = arg
    if lo >= hi:
        return None, [f"search.space.{key}.{kind}: lower must be < upper, got [{lo}, {hi}]"]
    if kind == "loguniform" and lo <= 0:
        return None, [f"search.space.{key}.loguniform: bounds must be > 0, got [{lo}, {hi}]"]
    return (tune.uniform(lo, hi) if kind == "uniform" else tune.loguniform(lo, hi)), []


def space_from_yaml(declared: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    space, problems = {}, []
    for key, spec in declared.items():
        domain, found = domain_from_yaml(str(key), spec)
        problems += found
        if not found:
            space[str(key)] = domain
    return space, problems


def candidate_values(domain: Any) -> list[Any]:
    """Values a domain can produce that are worth range-checking: every grid/choice value, both bounds."""
    if isinstance(domain, dict) and set(domain) == {"grid_search"}:
        return list(domain["grid_search"])
    if isinstance(domain, tune.search.sample.Categorical):
        return list(domain.categories)
    if isinstance(domain, (tune.search.sample.Float, tune.search.sample.Integer)):
        return [domain.lower, domain.upper if isinstance(domain, tune.search.sample.Float) else domain.upper - 1]
    return [domain]


def grid_size(space: dict[str, Any]) -> int:
    n = 1
    for domain in space.values():
        if isinstance(domain, dict) and set(domain) == {"grid_search"}:
            n *= len(domain["grid_search"])
    return n
