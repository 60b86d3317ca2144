"""The one change dpo-sweep makes to TRL itself, process-wide: on a CPU the fused LM head scores completion
tokens only.

TRL 1.16's fused LM head projects only the
positions that carry a label on Triton devices, but every position elsewhere (so that tile
shapes stay fixed for compilers such as Neuron's). On a CPU nothing is compiled, and with a
chat template most positions are prompt: SmolLM2's template puts ~40 tokens before an ~10-token
short answer, so 4 of every 5 rows of the 49152-wide projection, forward and backward, were
thrown away (the profile had that projection at 24% of a step). Which positions are projected
is the only change: the per-token log-probs are the same (tests/test_real_model_inputs.py).

`apply()` is idempotent; `trainables.trainer` calls it on import, so every trial and the shared reference
run with it. `original_use_triton` and `project_labelled_positions_only` let a test or a benchmark compare.
"""

from __future__ import annotations

import trl.trainer.utils as trl_utils

original_use_triton = trl_utils._use_triton  # before apply(): TRL's own rule


def project_labelled_positions_only(device) -> bool:
    # Read by TRL's fused LM head as "project only labelled positions"; the kernel module keeps its own
    # reference to the original, so the CPU still folds tiles with torch ops.
    return device.type == "cpu" or original_use_triton(device)


def apply() -> None:
    trl_utils._use_triton = project_labelled_positions_only
