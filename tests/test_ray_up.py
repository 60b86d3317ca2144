"""The `ray submit` path for real: `ray up` with Ray's local provider over SSH to 127.0.0.1, `ray submit`
of the shipped deploy/submit_sweep.py with a small sweep, the results checked, `ray down`.

scripts/setup-test-host.sh (run by scripts/test with CI=true or --setup-host) installs openssh-server, rsync and netcat and adds the
account the test logs in as: uid 0 with a home of its own, so the login PATH that `ray submit`'s bare
`python` needs reaches this venv without touching root's dotfiles. The test starts its own sshd on a free
port of 127.0.0.1 (Ray has no SSH-port setting: `ssh_proxy_command: nc %h PORT`), writes its key and
~/.bashrc into that home and removes them afterwards; sshd is stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import small_sweep
from procs import free_port, kill_tree

from trainables.tracking import PARENT_TAG, STATUS_TAG, make_client

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
USER = "dposweep-sshtest"


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def ssh_head():
    """(user, key, port, base) of an sshd on 127.0.0.1 that logs USER in with the venv on its PATH."""
    import pwd

    tools = [t for t in ("sshd", "rsync", "nc") if not (shutil.which(t) or Path(f"/usr/sbin/{t}").exists())]
    try:
        home = Path(pwd.getpwnam(USER).pw_dir)
    except KeyError:
        home = None
    if tools or home is None or os.geteuid() != 0:
        pytest.skip(f"needs root, {', '.join(tools) or 'the SSH tools'} and the {USER} account: run "
                    "./scripts/test --setup-host as root")
    base = Path(tempfile.mkdtemp(prefix="dpo-sshtest-"))
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "hostkey"))
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "id"))
    home.mkdir(parents=True, exist_ok=True)
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    shutil.copy(base / "id.pub", home / ".ssh" / "authorized_keys")
    # `ray submit` runs a bare `python`, `ray down` a bare `ray stop`, in a login shell that sources ~/.bashrc.
    (home / ".bashrc").write_text(f"export PATH={BIN}:$PATH RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0\n")
    sshd = None
    try:
        port = free_port()
        (base / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base}/hostkey\nPidFile {base}/sshd.pid\n"
            f"UsePAM no\nPasswordAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
            f"AllowUsers {USER}\nStrictModes no\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        sshd = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-f", str(base / "sshd_config"), "-D"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_ssh(base / "id", port)
        yield {"user": USER, "key": base / "id", "port": port, "base": base}
    finally:
        if sshd is not None:
            kill_tree(sshd.pid)  # the listener and its session processes
        (home / ".ssh" / "authorized_keys").unlink(missing_ok=True)
        (home / ".bashrc").unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)


def wait_for_ssh(key: Path, port: int, seconds: float = 60) -> None:
    """sshd takes a moment to listen after it starts: retry a login until it answers."""
    deadline = time.monotonic() + seconds
    while True:
        out = subprocess.run(["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o",
                              "UserKnownHostsFile=/dev/null", "-o", f"ProxyCommand=nc %h {port}", "-o",
                              "ConnectTimeout=10", "-o", "BatchMode=yes", f"{USER}@127.0.0.1", "true"],
                             capture_output=True, text=True, timeout=60, check=False)
        if out.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"ssh to the test sshd on port {port} failed: {out.stderr.strip()}")
        time.sleep(0.5)


def test_ray_up_submit_down_over_ssh(ssh_head, model_cache, tmp_path):
    work = tmp_path / "work"
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (sweeps / "sweep.yaml").write_text(yaml.safe_dump(small_sweep(
        model_cache, work / "out", name="sshsweep", trial={"dpo": {"reports_per_epoch": 2, "learning_rate": 5e-4}},
        search={"space": {"beta": {"grid": [0.1, 0.3]}}}, scheduler={"kind": "fifo"})))
    # The shipped on-prem YAML, pointed at this machine.
    cluster = yaml.safe_load((ROOT / "deploy" / "onprem.yaml").read_text())
    cluster["cluster_name"] = "dpo-sweep-sshtest"
    cluster["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    cluster["auth"] = {"ssh_user": ssh_head["user"], "ssh_private_key": str(ssh_head["key"]),
                       "ssh_proxy_command": f"nc %h {ssh_head['port']}"}
    cluster["file_mounts"] = {str(work / "sweeps"): str(sweeps)}
    port = free_port()
    cluster["head_start_ray_commands"] = [
        "ray stop",
        (f"ray start --head --port={port} --num-cpus=2 --include-dashboard=false "
        "--autoscaling-config=~/ray_bootstrap_config.yaml"),
    ]
    cluster["worker_start_ray_commands"] = []
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(cluster))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray = str(BIN / "ray")
    try:
        up = subprocess.run([ray, "up", "-y", "--no-config-cache", str(config)], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        submit = subprocess.run([ray, "submit", str(config), str(ROOT / "deploy" / "submit_sweep.py"), "--",
                                 str(work / "sweeps" / "sweep.yaml")], env=env, capture_output=True, text=True,
                                timeout=900, check=False)
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
        assert "Sweet spot" in submit.stdout
    finally:
        down = subprocess.run([ray, "down", "-y", str(config)], env=env, capture_output=True, text=True,
                              timeout=300, check=False)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]

    client = make_client(f"sqlite:///{work / 'out' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sshsweep")
    parent = client.search_runs([exp.experiment_id], "tags.`dpo_sweep.kind` = 'sweep'")[0]
    assert parent.info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert len(children) == 2 and all(c.data.tags[STATUS_TAG] == "completed" for c in children)
    assert list((work / "out").glob("sshsweep-*/analysis/interaction.png"))
