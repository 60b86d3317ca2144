"""Run trial configurations one after another and cache every report of each, for the analysis benchmarks.

    .venv/bin/python benchmarks/trial_histories.py --set dpo.learning_rate=5e-3 --set dpo.beta=0.01
    .venv/bin/python benchmarks/trial_histories.py --help

A configuration is a flat dict of dotted TrialSpec overrides ({"dpo.beta": 0.1, "data.synthetic.seed": 3});
it is merged onto a small synthetic base (tiny-llama, `BASE`) and the merged dict, serialised with sorted
keys, is the cache key. Each finished trial is one JSON line `{"key", "config", "seconds", "history"}` in
`<out>/trial_histories.jsonl`, appended the moment it ends: a rerun skips what is done, an interrupted run
loses only the trial in flight, and every benchmark sharing the file shares the runs. `history` is the list
of report dicts exactly as `run_trial` passed them to `report`.

One process, one thread (`torch.set_num_threads(1)`), one trial at a time: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
CACHE_FILE = "trial_histories.jsonl"
# Sized on one CPU thread (timed here): 512 pairs / batch 16 = 32 steps per epoch; 128 clean held-out pairs
# (accuracy resolution 1/128) and 64 probes, evaluated 4 times per epoch.
BASE: dict[str, Any] = {
    "model.name_or_path": "tiny-llama",
    "data.source": "synthetic",
    "data.synthetic.num_train": 512,
    "data.synthetic.num_eval": 128,
    "data.synthetic.num_probe": 64,
    "dpo.per_device_train_batch_size": 16,
    "dpo.per_device_eval_batch_size": 128,
    "dpo.reports_per_epoch": 4,
    "dpo.num_train_epochs": 2,
    "reward_hacking.enabled": False,  # the detectors run afterwards on the history, not inside the trial
}
# The real-model task: SmolLM2-135M-Instruct in NF4 with LoRA (the `dpo-sweep run smollm2` set-up) on the bundled
# arithmetic chat task. 64 pairs / batch 8 = 8 steps, a report every 2; 40 probe questions, 32 held-out pairs.
REAL_BASE: dict[str, Any] = {
    "model.name_or_path": "smollm2-135m",
    "model.quantization": "nf4",
    "lora.r": 16,
    "lora.alpha": 32,
    "data.source": "arithmetic",
    "data.arithmetic.num_train": 64,
    "data.arithmetic.num_eval": 32,
    "data.arithmetic.num_probe": 40,
    "data.arithmetic.form": "short",
    "dpo.per_device_train_batch_size": 8,
    "dpo.per_device_eval_batch_size": 40,
    "dpo.max_length": 64,
    "dpo.reports_per_epoch": 4,
    "dpo.num_train_epochs": 1,
    "reward_hacking.enabled": False,
}
# A quick mode for checking that a script works: a quarter of the data.
QUICK: dict[str, Any] = {"data.synthetic.num_train": 128, "data.synthetic.num_eval": 128,
                         "data.synthetic.num_probe": 32}


def merged(config: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full flat config of a trial: base, then the trial's own overrides."""
    return {**(BASE if base is None else base), **config}


def cache_key(full_config: dict[str, Any]) -> str:
    return json.dumps(full_config, sort_keys=True)


def to_trial_raw(full_config: dict[str, Any], output_dir: str, cache_dir: str) -> dict[str, Any]:
    """Flat dotted overrides -> the nested raw dict TrialSpec validates."""
    from trainables.config_io import set_path

    raw: dict[str, Any] = {"output_dir": output_dir, "cache_dir": cache_dir, "save_total_limit": 1}
    for key, value in full_config.items():
        raw = set_path(raw, key.split("."), value)
    return raw


def load_cache(path: Path) -> dict[str, dict[str, Any]]:
    """key -> record of every finished trial in the cache file (a torn last line is ignored)."""
    done: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[rec["key"]] = rec
    return done


def run_one(full_config: dict[str, Any], cache_dir: str) -> list[dict[str, Any]]:
    """Train one trial; the list of its reports' metrics."""
    from trainables.config_io import validate_trial_spec
    from trainables.trial import run_trial

    history: list[dict[str, Any]] = []
    tmp = tempfile.mkdtemp(prefix="dpo-hist-")
    try:
        spec = validate_trial_spec(to_trial_raw(full_config, tmp, cache_dir))
        run_trial(spec, lambda metrics, _ckpt: history.append(dict(metrics)), log=lambda *_: None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return history


def run_histories(configs: Iterable[dict[str, Any]], out_dir: str | Path = DEFAULT_OUT,
                  base: dict[str, Any] | None = None, cache_dir: str | None = None,
                  log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The cached record of every config (running those not in the cache), in the order given.

    Records are dicts {"key", "config" (merged, flat), "seconds", "history"}.
    """
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    cache_dir = cache_dir or os.environ.get("DPO_SWEEP_CACHE") or "/tmp/dpo-cache"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CACHE_FILE
    done = load_cache(path)
    fulls = [merged(c, base) for c in configs]
    todo = len({cache_key(f) for f in fulls} - set(done))
    log(f"[histories] {len(fulls)} trials, {len(fulls) - todo} cached in {path}, {todo} to run")
    records, ran, t_all = [], 0, time.perf_counter()
    for full in fulls:
        key = cache_key(full)
        if key not in done:
            t0 = time.perf_counter()
            history = run_one(full, cache_dir)
            rec = {"key": key, "config": full, "seconds": round(time.perf_counter() - t0, 2), "history": history}
            with path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            done[key] = rec
            ran += 1
            short = {k.split(".")[-1]: v for k, v in full.items() if k not in (base if base is not None else BASE)
                     or (base if base is not None else BASE)[k] != v}
            log(f"[histories] {ran}/{todo} {short} {rec['seconds']:.1f}s "
                f"(elapsed {time.perf_counter() - t_all:.0f}s)")
        records.append(done[key])
    return records


def total_seconds(records: Iterable[dict[str, Any]]) -> float:
    """Compute spent on these trials (from the cache: also what earlier runs spent)."""
    return sum({r["key"]: r["seconds"] for r in records}.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted TrialSpec override, value read as YAML (repeatable)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"results dir (default {DEFAULT_OUT})")
    ap.add_argument("--quick", action="store_true", help="a quarter of the data (a check that it works)")
    args = ap.parse_args()
    from trainables.config_io import parse_override

    config = {}
    for text in args.set:
        path, value = parse_override(text)
        if isinstance(value, str):  # YAML 1.1 reads '5e-3' as a string; the cache key wants the number
            try:
                value = float(value)
            except ValueError:
                pass
        config[".".join(path)] = value
    base = {**BASE, **QUICK} if args.quick else BASE
    rec = run_histories([config], args.out, base=base)[0]
    for m in rec["history"]:
        print(json.dumps({k: m.get(k) for k in ("step", "epoch", "eval_rewards_accuracies", "eval_rewards_margins",
                                                "eval_logps_chosen", "eval_abs_logratio", "answer_exact_rate",
                                                "train_rewards_accuracies", "train_loss")}))
    print(f"{rec['seconds']:.1f}s")


if __name__ == "__main__":
    main()
