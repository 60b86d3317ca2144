"""The `ray submit` path for real: `ray up` with Ray's local provider over SSH to 127.0.0.1, `ray submit`
of the shipped deploy/submit_sweep.py with a small sweep, the results checked, `ray down`.

It needs sshd, rsync and nc on the machine (scripts/setup-test-host.sh installs them, only with CI=true or
--setup-host, only as root); nothing else about the machine changes. The test starts its own sshd, run by the
user running the tests, on a free port of 127.0.0.1 (Ray has no SSH-port setting: `ssh_proxy_command: nc %h
PORT`), and logs in as that same user: no account is added. The sshd reads its key from the test's temp folder
(AuthorizedKeysFile) and sets HOME to a temp folder too (SetEnv), so the ~/.bashrc that puts this venv first on
the login PATH (`ray submit` runs a bare `python`) and Ray's ~/ray_bootstrap_* files land there, never in the
user's own home. sshd is stopped by its pid and the folder removed.
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


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def ssh_head():
    """(user, key, port, base) of an sshd on 127.0.0.1 that logs the current user in, with a temp HOME whose
    ~/.bashrc puts the venv first on the PATH."""
    import pwd

    sshd_bin = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    tools = [t for t, found in (("sshd", sshd_bin), ("rsync", shutil.which("rsync")), ("nc", shutil.which("nc")))
             if not found]
    if tools:
        pytest.skip(f"needs {', '.join(tools)} (openssh-server, rsync, netcat-openbsd): run ./scripts/test "
                    "--setup-host as root, or install them")
    user = pwd.getpwuid(os.geteuid()).pw_name
    base = Path(tempfile.mkdtemp(prefix="dpo-sshtest-"))
    home = base / "home"
    home.mkdir()
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "hostkey"))
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "id"))
    shutil.copy(base / "id.pub", base / "authorized_keys")
    # `ray submit` runs a bare `python`, `ray down` a bare `ray stop`, in a login shell that sources ~/.bashrc.
    (home / ".bashrc").write_text(f"export PATH={BIN}:$PATH RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0\n")
    sshd = None
    try:
        port = free_port()
        (base / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base}/hostkey\nPidFile {base}/sshd.pid\n"
            f"AuthorizedKeysFile {base}/authorized_keys\nSetEnv HOME={home}\nAllowUsers {user}\n"
            "UsePAM no\nPasswordAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
            "StrictModes no\n")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder, needed only as root
        sshd = subprocess.Popen([sshd_bin, "-f", str(base / "sshd_config"), "-D"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_ssh(user, base / "id", port)
        yield {"user": user, "key": base / "id", "port": port, "base": base}
    finally:
        if sshd is not None:
            kill_tree(sshd.pid)  # the listener and its session processes
        shutil.rmtree(base, ignore_errors=True)


def wait_for_ssh(user: str, key: Path, port: int, seconds: float = 60) -> None:
    """sshd takes a moment to listen after it starts: retry a login until it answers."""
    deadline = time.monotonic() + seconds
    while True:
        out = subprocess.run(["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o",
                              "UserKnownHostsFile=/dev/null", "-o", f"ProxyCommand=nc %h {port}", "-o",
                              "ConnectTimeout=10", "-o", "BatchMode=yes", f"{user}@127.0.0.1", "true"],
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
