"""Work done once per sweep before any trial: the shared tokenized data and reference log-probs.

On GPUs it runs as one Ray task with a trial's resources, so on a cluster it lands on a GPU node
like the trials do; a local CPU-only sweep computes it in the driver, which has the libraries
imported already (a fresh Ray worker would spend seconds importing them first). Its result is stored content-addressed under the sweep's storage path
(`trainables.reference`): a later sweep with the same key reuses it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from orchestrator.config import SweepConfig
from trainables.cache import built_atomically
from trainables.config import TrialSpec
from trainables.params import resolve_param_key
from trainables.reference import META, SharedReference, read_shared, reference_key, reference_key_parts

# Trial fields whose change changes token ids or reference log-probs: sweeping one of them means
# trials cannot share one precomputed reference.
KEY_FIELDS = ("model.", "data.", "dpo.max_length", "dpo.truncation_mode", "cache_dir", "evaluation.")


def reference_cache_root(cfg: SweepConfig) -> Path:
    """Beside the sweep's results; trials on every node read it, so on a cluster storage.path must be a
    shared filesystem (object-store URIs turn sharing off)."""
    return Path(cfg.storage.path) / "reference-cache"


def unsharable_keys(space: dict) -> list[str]:
    return [k for k in space if (resolve_param_key(k) or k).startswith(KEY_FIELDS)]


def _quiet(*_):
    pass


def build_shared_reference(spec: TrialSpec, cache_root: str | Path, log=print) -> SharedReference:
    """Find the shared data for `spec` under `cache_root`, or compute and store it (atomically)."""
    import datasets

    from trainables.data import load_preference_data
    from trainables.generation import shared_entry
    from trainables.model import load_tokenizer, resolve_model_path
    from trainables.trainer import build_trainer

    model_path = resolve_model_path(spec.model, spec.cache_dir, log=log)
    tokenizer = load_tokenizer(model_path, spec.model)
    data = load_preference_data(spec.data, tokenizer, spec.dpo.max_length, spec.dpo.truncation_mode)
    parts = reference_key_parts(spec, model_path, tokenizer, data.train, data.eval, data.probes)
    key = reference_key(parts)
    target = Path(cache_root) / key
    meta = read_shared(target)
    if meta is not None:
        return SharedReference(key, target, False, 0.0, meta["train_rows"], meta["eval_rows"])

    start = time.perf_counter()
    with built_atomically(target, lambda t: read_shared(t) is not None) as tmp:
        ref_spec = spec.model_copy(deep=True)
        ref_spec.dpo.precompute_ref_log_probs = True
        ref_spec.output_dir = str(tmp / "unused-output")
        trainer, _, callback = build_trainer(ref_spec, lambda m, c: None, log=log, data=data)
        # A fresh adapter is the identity: these are the reference model's completions and probe answers, which
        # every trial reads instead of making its own.
        callback.generation.set_reference(trainer.model)
        probe_reference = callback.reference_answers(trainer.model) if data.probes else {}
        columns = ["prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps"]
        for split, ds in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset)):
            datasets.Dataset.from_dict({c: ds[c] for c in columns}).save_to_disk(str(tmp / split))
        seconds = time.perf_counter() - start
        meta = {"key": key, "parts": parts, "probes": data.probes, "description": data.description,
                "conversational": data.conversational, "dropped": data.dropped, "train_rows": trainer.train_dataset.num_rows,
                "eval_rows": trainer.eval_dataset.num_rows, "seconds": round(seconds, 3),
                "generation": shared_entry(callback.generation), "probe_reference": probe_reference}
        shutil.rmtree(tmp / "unused-output", ignore_errors=True)
        (tmp / META).write_text(json.dumps(meta, indent=2))
    return SharedReference(key, target, True, seconds, meta["train_rows"], meta["eval_rows"])


def builds_in_driver(gpu_per_trial: float, local: bool) -> bool:
    """Where the shared reference is built: a local CPU sweep builds it in the driver's own process; elsewhere
    it is a Ray task on a trial's resources (a GPU, a worker node)."""
    return local and not gpu_per_trial


def prepare_shared_reference(cfg: SweepConfig, gpu_per_trial: float, local: bool) -> SharedReference:
    import ray

    if builds_in_driver(gpu_per_trial, local):
        return build_shared_reference(cfg.trial, str(reference_cache_root(cfg)), log=_quiet)
    task = ray.remote(num_cpus=cfg.resources.cpu_per_trial, num_gpus=gpu_per_trial, max_retries=0)(
        build_shared_reference)
    return ray.get(task.remote(cfg.trial, str(reference_cache_root(cfg)), log=_quiet))
