"""TRL's DPOTrainer with what a sweep trial needs on top.

1. Resume keeps the adapter's dtype. TRL 1.16 casts a QLoRA adapter's weights to bf16 when it
   builds the trainer; resuming a checkpoint goes through peft's `load_adapter`, which upcasts them
   to fp32 again, so a resumed trial trained at another precision than an uninterrupted one and
   drifted away from it (seen here: 1-2 % apart in the final LoRA weights).
2. Data prepared once per sweep is used as it is. TRL re-tokenizes every dataset it is given and,
   with `precompute_ref_log_probs`, recomputes the reference log-probs (its cache is keyed by the
   in-memory dataset, so nothing is shared between trials). Datasets that already carry token ids
   and reference log-probs (see `trainables.reference`) skip both.
"""

from __future__ import annotations

from trl import DPOTrainer

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
