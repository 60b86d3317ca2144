"""The one place dpo-sweep's local cache directory is decided: built-in models (tiny-llama, converted GGUF files)
and, for sweeps whose results live in the cloud, their analysis files."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """DPO_SWEEP_CACHE where set, else ~/.cache/dpo-sweep. A trial config's `cache_dir` overrides it for models."""
    return Path(os.environ.get("DPO_SWEEP_CACHE") or Path.home() / ".cache" / "dpo-sweep")


@contextmanager
def built_atomically(target: Path, finished: Callable[[Path], bool]) -> Iterator[Path]:
    """A temporary directory beside `target` to build into; renamed to `target` when the block ends without an
    error, so readers never see a half-written entry. Another process may finish the same entry first: its copy
    is kept when `finished(target)` says it is complete, and the rename's failure is raised otherwise."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        try:
            tmp.rename(target)
        except OSError:
            if not finished(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
