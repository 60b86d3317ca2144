"""TRL's DPOTrainer with the one fix a resumable sweep trial needs.

TRL 1.16 casts a QLoRA adapter's weights to bf16 when it builds the trainer.
Resuming a checkpoint goes through peft's `load_adapter`, which upcasts them to
fp32 again, so a resumed trial trained at another precision than an
uninterrupted one and drifted away from it (seen here: 1-2 % apart in the final
LoRA weights). The adapter keeps the dtype it had before the load.
"""

from __future__ import annotations

from trl import DPOTrainer


class ResumableDPOTrainer(DPOTrainer):
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        dtypes = {n: p.dtype for n, p in self.model.named_parameters() if p.requires_grad}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for name, param in self.model.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])
