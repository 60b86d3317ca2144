"""The one place dpo-sweep's local cache directory is decided: built-in models (tiny-llama, converted GGUF files)
and, for sweeps whose results live in the cloud, their analysis files."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """DPO_SWEEP_CACHE where set, else ~/.cache/dpo-sweep. A trial config's `cache_dir` overrides it for models."""
    return Path(os.environ.get("DPO_SWEEP_CACHE") or Path.home() / ".cache" / "dpo-sweep")
