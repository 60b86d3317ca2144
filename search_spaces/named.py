"""Named search spaces: each a plain function returning a Ray Tune `param_space`.

Keys are DPO knobs by their short name (`beta`, `learning_rate`, `num_train_epochs`,
`gradient_accumulation_steps`, `label_smoothing`, `loss_type`, ...) or any trial-config
field by dotted path (`lora.r`, `data.synthetic.label_noise`). Nothing here trains.

    dpo-sweep spaces                  # lists them with their sizes
    python -c "from search_spaces import SPACES; print(SPACES['beta-ladder']())"

Learning rates are those of a real LoRA / QLoRA DPO run, and every one lies in
LORA_LEARNING_RATE_RANGE = [5e-7, 1e-4]: full DPO fine-tunes of >7 B models use 5e-7 - 1e-6, a
LoRA adapter about 10x more (5e-6 - 1e-5), and smaller models in published QLoRA DPO recipes go up
to ~5e-5; 1e-4 leaves room above that for models of a few hundred million parameters. Toy models
and very short runs need far more (the demo's tiny-llama learns at 5e-4, the smollm2 example's
dozen steps at up to 1e-3): those configs declare their own `search.space` inline
(orchestrator/configs/demo.yaml, smollm2.yaml), never a named space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import tune

# Every learning rate a named space can propose lies in this range (tests/test_real_model_inputs.py checks it).
LORA_LEARNING_RATE_RANGE = (5e-7, 1e-4)


def seed_exercise() -> dict[str, Any]:
    """beta x learning_rate, 3 x 3 grid: the exercise a practitioner runs first on a real model.

    beta from 'chases reward' (0.05) to 'barely moves' (0.5); learning rate across the LoRA range, a
    factor ~3 apart: 5e-6 (the cautious LoRA start), 1.5e-5, 5e-5 (the top of QLoRA recipes)."""
    return {
        "beta": tune.grid_search([0.05, 0.1, 0.5]),
        "learning_rate": tune.grid_search([5e-6, 1.5e-5, 5e-5]),
    }


def beta_ladder() -> dict[str, Any]:
    """beta 0.05, 0.1, 0.2, 0.5 at one learning rate: how hard to hold the policy to the reference."""
    return {"beta": tune.grid_search([0.05, 0.1, 0.2, 0.5]), "learning_rate": 1e-5}


def full() -> dict[str, Any]:
    """Every DPO knob at once, sampled (use search.num_samples, or search.algorithm: optuna)."""
    return {
        "beta": tune.loguniform(0.01, 0.5),
        "learning_rate": tune.loguniform(1e-6, 1e-4),
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
