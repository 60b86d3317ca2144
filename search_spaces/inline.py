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

from typing import Annotated, Any

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator
from ray import tune

from trainables.config import StrictModel

KINDS = ("grid", "choice", "uniform", "loguniform")


class Grid(StrictModel):
    grid: list[Any] = Field(min_length=1, description="Values tried one by one: an axis of the grid.")

    def domain(self) -> Any:
        return tune.grid_search(self.grid)


class Choice(StrictModel):
    choice: list[Any] = Field(min_length=1, description="Values sampled uniformly (random or optuna search).")

    def domain(self) -> Any:
        return tune.choice(self.choice)


class Uniform(StrictModel):
    uniform: tuple[float, float] = Field(description="[lower, upper]: sampled uniformly between them.")

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        lo, hi = self.uniform
        if lo >= hi:
            raise ValueError(f"uniform: lower must be < upper, got [{lo:g}, {hi:g}]")
        return self

    def domain(self) -> Any:
        return tune.uniform(*self.uniform)


class LogUniform(StrictModel):
    loguniform: tuple[float, float] = Field(description="[lower, upper], both > 0: sampled on a log scale.")

    @model_validator(mode="after")
    def _positive_and_ordered(self) -> LogUniform:
        lo, hi = self.loguniform
        if lo <= 0:
            raise ValueError(f"loguniform: bounds must be > 0, got [{lo:g}, {hi:g}]")
        if lo >= hi:
            raise ValueError(f"loguniform: lower must be < upper, got [{lo:g}, {hi:g}]")
        return self

    def domain(self) -> Any:
        return tune.loguniform(*self.loguniform)


def _kind(value: Any) -> str | None:
    """Which domain a declared value is: its one key, or a plain value; None for a mapping that is neither."""
    if not isinstance(value, dict):
        return "~value"
    if len(value) == 1 and next(iter(value)) in KINDS:
        return f"~{next(iter(value))}"
    return None


# One declared key of an inline space. Tags start with '~' so error locations can leave them out.
Domain = Annotated[
    Annotated[Grid, Tag("~grid")] | Annotated[Choice, Tag("~choice")] | Annotated[Uniform, Tag("~uniform")]
    | Annotated[LogUniform, Tag("~loguniform")] | Annotated[Any, Tag("~value")],
    Discriminator(_kind, custom_error_type="search_domain",
                  custom_error_message="expected one of {grid: ..., choice: ..., uniform: ..., loguniform: ...} or "
                                       "a plain value"),
]


def space_from_yaml(declared: dict[str, Any]) -> dict[str, Any]:
    """A validated inline space (`{key: Domain}`) as a Ray Tune param_space."""
    return {str(k): d.domain() if isinstance(d, BaseModel) else d for k, d in declared.items()}


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
