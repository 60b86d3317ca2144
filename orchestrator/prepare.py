"""Work done once per sweep before any trial: the shared tokenized data and reference log-probs.

On GPUs it runs as one Ray task with a trial's resources, so on a cluster it lands on a GPU node
like the trials do; a local CPU-only sweep computes it in the driver, which has the libraries
imported already (a fresh Ray worker would spend seconds importing them first). Its result is stored content-addressed under the sweep's storage path
(`trainables.reference`): a later sweep with the same key reuses it.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import SweepConfig
from trainables.config import resolve_param_key
from trainables.reference import SharedReference, build_shared_reference

# Trial fields whose change changes token ids or reference log-probs: sweeping one of them means
# trials cannot share one precomputed reference.
KEY_FIELDS = ("model.", "data.", "dpo.max_length", "dpo.truncation_mode", "cache_dir")


def reference_cache_root(cfg: SweepConfig) -> Path:
    """Beside the sweep's results; trials on every node read it, so on a cluster storage.path must be a
    shared filesystem (object-store URIs turn sharing off)."""
    return Path(cfg.storage.path) / "reference-cache"


def unsharable_keys(space: dict) -> list[str]:
    return [k for k in space if (resolve_param_key(k) or k).startswith(KEY_FIELDS)]


def _quiet(*_):
    pass


def prepare_shared_reference(cfg: SweepConfig, gpu_per_trial: float, local: bool) -> SharedReference:
    import ray

    if local and not gpu_per_trial:
        return build_shared_reference(cfg.trial, str(reference_cache_root(cfg)), log=_quiet)
    task = ray.remote(num_cpus=cfg.resources.cpu_per_trial, num_gpus=gpu_per_trial, max_retries=0)(
        build_shared_reference)
    return ray.get(task.remote(cfg.trial, str(reference_cache_root(cfg)), log=_quiet))
