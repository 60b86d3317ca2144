"""Named search spaces: each a plain function returning a Ray Tune `param_space`.

Keys are DPO knobs by their short name (`beta`, `learning_rate`, `num_train_epochs`,
`gradient_accumulation_steps`, `label_smoothing`, `loss_type`, ...) or any trial-config
field by dotted path (`lora.r`, `data.synthetic.label_noise`). Nothing here trains.

    dpo-sweep spaces                  # lists them with their sizes
    python -c "from search_spaces import SPACES; print(SPACES['beta-ladder']())"

Learning rates are in the range where a LoRA adapter on the built-in 0.2 M-parameter demo model
moves within an epoch; for a 0.5-8 B model in QLoRA, ~10x lower is the usual start (5e-6 - 5e-5):
declare those in the sweep YAML's own `search.space`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import tune


def seed_exercise() -> dict[str, Any]:
    """beta x learning_rate, 3 x 3 grid: the exercise a practitioner runs first (the demo)."""
    return {
        "beta": tune.grid_search([0.01, 0.1, 0.5]),
        "learning_rate": tune.grid_search([5e-5, 5e-4, 5e-3]),
    }


def beta_ladder() -> dict[str, Any]:
    """beta 0.05, 0.1, 0.2, 0.5 at one learning rate: how hard to hold the policy to the reference."""
    return {"beta": tune.grid_search([0.05, 0.1, 0.2, 0.5]), "learning_rate": 5e-4}


def full() -> dict[str, Any]:
    """Every DPO knob at once, sampled (use search.num_samples, or search.algorithm: optuna)."""
    return {
        "beta": tune.loguniform(0.01, 0.5),
        "learning_rate": tune.loguniform(1e-5, 5e-3),
        "num_train_epochs": tune.choice([1, 2, 3]),
        "gradient_accumulation_steps": tune.choice([1, 2, 4]),
        "label_smoothing": tune.uniform(0.0, 0.3),
    }


def noisy_labels() -> dict[str, Any]:
    """label_smoothing x epochs: does conservative DPO resist annotation noise, do extra epochs overfit it."""
    return {
        "label_smoothing": tune.grid_search([0.0, 0.1, 0.2]),
        "num_train_epochs": tune.grid_search([1, 2, 4]),
    }


SPACES: dict[str, Callable[[], dict[str, Any]]] = {
    "seed-exercise": seed_exercise,
    "beta-ladder": beta_ladder,
    "full": full,
    "noisy-labels": noisy_labels,
}
