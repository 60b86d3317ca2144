"""TRL's DPOTrainer with what a sweep trial needs on top.

1. Resume keeps the adapter's dtype. TRL 1.16 casts a QLoRA adapter's weights to bf16 when it
   builds the trainer; resuming a checkpoint goes through peft's `load_adapter`, which upcasts them
   to fp32 again, so a resumed trial trained at another precision than an uninterrupted one and
   drifted away from it (seen here: 1-2 % apart in the final LoRA weights).
2. Data prepared once per sweep is used as it is. TRL re-tokenizes every dataset it is given and,
   with `precompute_ref_log_probs`, recomputes the reference log-probs (its cache is keyed by the
   in-memory dataset, so nothing is shared between trials). Datasets that already carry token ids
   and reference log-probs (see `trainables.reference`) skip both.
3. On a CPU the LM head scores completion tokens only. TRL 1.16's fused LM head projects only the
   positions that carry a label on Triton devices, but every position elsewhere (so that tile
   shapes stay fixed for compilers such as Neuron's). On a CPU nothing is compiled, and with a
   chat template most positions are prompt: SmolLM2's template puts ~40 tokens before an ~10-token
   short answer, so 4 of every 5 rows of the 49152-wide projection, forward and backward, were
   thrown away (the profile had that projection at 24% of a step). Which positions are projected
   is the only change: the per-token log-probs are the same (tests/test_real_model_inputs.py).
"""

from __future__ import annotations

import trl.trainer.utils as trl_utils
from trl import DPOTrainer

_trl_use_triton = trl_utils._use_triton


def _project_labelled_positions_only(device) -> bool:
    # Read by TRL's fused LM head as "project only labelled positions"; the kernel module keeps its own
    # reference to the original, so the CPU still folds tiles with torch ops.
    return device.type == "cpu" or _trl_use_triton(device)


trl_utils._use_triton = _project_labelled_positions_only

TOKENIZED_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


class SweepDPOTrainer(DPOTrainer):
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        dtypes = {n: p.dtype for n, p in self.model.named_parameters() if p.requires_grad}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for name, param in self.model.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if all(c in getattr(dataset, "column_names", ()) for c in TOKENIZED_COLUMNS):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        if all(c in getattr(dataset, "column_names", ()) for c in REFERENCE_COLUMNS):
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)
