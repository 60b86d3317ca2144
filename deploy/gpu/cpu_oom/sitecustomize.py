"""The CPU dry run of scripts/gpu-acceptance only: a stand-in for a GPU's memory limit in the `oom` step.

A CPU has no device memory to overflow, and overflowing the machine's RAM would take the machine down with
the trial. With DPO_SWEEP_DRY_RUN_TOKEN_BUDGET set (the acceptance sets it for that step's sweep alone, and puts
this folder first on PYTHONPATH so that every trial process loads this file), an embedding lookup of more
tokens than the budget raises torch.OutOfMemoryError, the error CUDA's allocator raises: what happens after it
(the trial's handling, its status, the sweep going on) is the real code. Without the variable: nothing.
"""

import os
import sys

_BUDGET = os.environ.get("DPO_SWEEP_DRY_RUN_TOKEN_BUDGET")


def _patch(functional) -> None:
    import torch

    budget, embedding = int(_BUDGET), functional.embedding

    def limited(input, *args, **kwargs):
        if input.numel() > budget:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (simulated by the CPU dry run: {input.numel()} tokens in one forward pass, "
                f"over its budget of {budget})")
        return embedding(input, *args, **kwargs)

    functional.embedding = limited


if _BUDGET:
    import importlib.abc
    import importlib.util

    class _AfterImport(importlib.abc.MetaPathFinder):
        """Patches torch.nn.functional once it is imported, so processes that never import torch pay nothing."""

        def find_spec(self, name, path, target=None):
            if name != "torch.nn.functional":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _patch(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _AfterImport())
