"""Tokenized data and reference log-probs, computed once per sweep and shared by every trial.

None of the swept DPO knobs (beta, learning rate, epochs, accumulation, label smoothing, loss type,
LoRA settings) changes the reference model's log-probs or the token ids: the reference is the base
model with the adapter disabled. So a sweep computes them once, stores them content-addressed
under its storage path, and every trial trains with `precompute_ref_log_probs` on that data: no
trial tokenizes, none runs a reference forward pass.

The key hashes exactly what changes them: the base model (id or directory fingerprint, revision),
quantization (kind, double quant, compute dtype), the tokenizer (vocabulary, chat template,
special tokens), the validated train/eval rows, max_length and truncation mode, and the versions
of the libraries that tokenize and quantize (trl, transformers, bitsandbytes, torch).

    <storage>/reference-cache/<key>/{train,eval}/   datasets (save_to_disk) with ids + ref log-probs
    <storage>/reference-cache/<key>/meta.json        the key's parts, probes and the reference's answers to them
                                                     (`probe_reference`), its generation completions, sizes,
                                                     seconds taken

This module is the store and its key; the driver builds an entry (`orchestrator.prepare`), trials read one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.config import TrialSpec

META = "meta.json"
# 2: the reference's completions of the generation prompts (trainables.generation); 3: the reference's answers
# to the probes (`probe_reference`), and the probes in the key.
FORMAT_VERSION = 3


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(path_or_id: str) -> dict[str, Any]:
    """A local directory: its config and its weight files' names, sizes and mtimes (not their bytes:
    reading 16 GB to hash an 8 B model would cost more than the precompute). A hub id: the id."""
    p = Path(path_or_id)
    if not p.is_dir():
        return {"id": path_or_id}
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir()
                   if f.suffix in (".safetensors", ".bin") and f.is_file())
    config = (p / "config.json").read_text() if (p / "config.json").is_file() else ""
    return {"dir_config": _sha(config), "weights": files}


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return _sha({"vocab": vocab, "chat_template": getattr(tokenizer, "chat_template", None),
                 "special": tokenizer.special_tokens_map, "class": type(tokenizer).__name__})


def data_fingerprint(train: list[dict], eval_rows: list[dict], probes: list | None = None) -> str:
    return _sha({"train": train, "eval": eval_rows, "probes": probes or []})


def reference_key_parts(spec: TrialSpec, model_path: str, tokenizer, train: list[dict],
                        eval_rows: list[dict], probes: list | None = None) -> dict[str, Any]:
    import bitsandbytes
    import torch
    import transformers
    import trl

    from trainables.model import resolve_compute_dtype

    m = spec.model
    return {
        "format": FORMAT_VERSION,
        # What the weights are, not what they are called: tiny-llama and its directory share a key.
        "model": {**model_fingerprint(model_path), "revision": m.revision if not Path(model_path).is_dir() else None},
        "quantization": {"kind": m.quantization, "double_quant": m.double_quant,
                         "compute_dtype": resolve_compute_dtype(m.compute_dtype)},
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "data": data_fingerprint(train, eval_rows, probes),
        "max_length": spec.dpo.max_length,
        "truncation_mode": spec.dpo.truncation_mode,
        # The prompts, their length cap and the rewards the reference's completions were made and scored with.
        "evaluation": spec.evaluation.model_dump(exclude={"import_dir"}),
        "libraries": {"trl": trl.__version__, "transformers": transformers.__version__,
                      "bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__.split("+")[0]},
    }


def reference_key(parts: dict[str, Any]) -> str:
    return _sha(parts)[:24]


@dataclass
class SharedReference:
    key: str
    path: Path
    computed: bool  # False: an earlier sweep's copy was reused
    seconds: float
    train_rows: int
    eval_rows: int


def read_shared(path: str | Path) -> dict[str, Any] | None:
    meta = Path(path) / META
    return json.loads(meta.read_text()) if meta.is_file() else None


def load_shared_datasets(path: str | Path):
    """(train, eval, meta) of a shared reference directory."""
    import datasets

    p = Path(path)
    meta = read_shared(p)
    if meta is None:
        raise FileNotFoundError(f"{p} is not a shared reference directory (no {META}); re-run the sweep to "
                                "compute it")
    return datasets.load_from_disk(str(p / "train")), datasets.load_from_disk(str(p / "eval")), meta
