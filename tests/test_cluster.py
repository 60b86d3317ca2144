"""Cluster runs for real: a two-node Ray cluster on this machine, a real `mlflow server` on 127.0.0.1,
and a sweep submitted with `ray job submit`. Every process the tests start is stopped by its own pid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import small_sweep
from procs import free_port, kill_tree, wait_for

from orchestrator.cluster import ClusterView
from orchestrator.preflight import PreflightError, check_tracking_for_cluster, run_preflight
from trainables.tracking import NODE_TAG, PARENT_TAG, STATUS_TAG, make_client

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SECRET = "s3cr3t-mlflow-token-4242"


@pytest.fixture(scope="module")
def two_node_cluster():
    """A head node and a second node joined with `ray start --address`, each with 1 CPU and its own
    custom resource. Ray's processes daemonize; they are found by this cluster's own temp dir."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus=1", "--disable-usage-stats", f"--temp-dir={temp}"]
    try:
        subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--resources", '{"head_node": 1}',
                        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                        *common], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([str(BIN / "ray"), "start", f"--address=127.0.0.1:{port}", "--resources", '{"worker_a": 1}',
                        *common], env=env, check=True, capture_output=True, timeout=120)
        wait_for(f"http://127.0.0.1:{dash}/api/version")
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        # One wait for all of them: Ray's daemons, stopped one by one, each took its full grace period.
        kill_tree(*(proc.info["pid"] for proc in psutil.process_iter(["pid", "cmdline"])
                    if any(temp in part for part in (proc.info["cmdline"] or []))))


def cluster_sweep(path: Path, model_cache: str, storage: Path, tracking_uri: str) -> Path:
    path.write_text(yaml.safe_dump(small_sweep(
        model_cache, storage, name="cluster", trial={"dpo": {"reports_per_epoch": 2, "learning_rate": 5e-4}},
        search={"space": {"beta": {"grid": [0.1, 0.3]}}}, scheduler={"kind": "fifo"}, tracking={"uri": tracking_uri})))
    return path


def test_sweep_via_ray_job_submit_on_two_nodes(two_node_cluster, mlflow_server, model_cache, tmp_path):
    storage = tmp_path / "shared-storage"
    sweep = cluster_sweep(tmp_path / "sweep.yaml", model_cache, storage, mlflow_server.uri)
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_USERNAME": "sweeper", "MLFLOW_TRACKING_PASSWORD": SECRET}}
    # Ray's dashboard answers before its job agent is up; on a busy machine the first submissions are refused
    # with "No available agent to submit job, please try again later" (seen once in a parallel suite run). That
    # refusal starts nothing, so it is asked again, for at most a minute; any other failure fails the test.
    for _attempt in range(12):
        out = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", two_node_cluster["dashboard"],
             "--runtime-env-json", json.dumps(runtime_env), "--",
             str(BIN / "dpo-sweep"), "run", str(sweep), "--address", "auto"],
            env=two_node_cluster["env"], capture_output=True, text=True, timeout=900, check=False)
        if out.returncode == 0 or "No available agent to submit job" not in out.stdout + out.stderr:
            break
        time.sleep(5)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "Sweet spot" in out.stdout

    client = make_client(mlflow_server.uri)
    exp = client.get_experiment_by_name("cluster")
    parents = client.search_runs([exp.experiment_id], "tags.`dpo_sweep.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parents[0].info.run_id}'")
    assert len(children) == 2
    assert all(c.info.status == "FINISHED" and c.data.tags[STATUS_TAG] == "completed" for c in children)
    for c in children:
        assert len(client.get_metric_history(c.info.run_id, "eval_rewards_accuracies")) == 2
    # One trial per node: each node has 1 CPU and a trial needs 1.
    assert len({c.data.tags[NODE_TAG] for c in children}) == 2

    checkpoints = list(storage.glob("cluster-*/*/checkpoint_*"))
    assert len({p.parent.name for p in checkpoints}) == 2
    assert all((p / "adapter_model.safetensors").is_file() for p in checkpoints)

    # The credential reached the trials (the runs exist) but nothing recorded it.
    for run in [*parents, *children]:
        assert SECRET not in json.dumps({**run.data.params, **run.data.tags})
        local = client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl" / run.info.run_id))
        for f in Path(local).rglob("*"):
            if f.is_file() and f.suffix in (".json", ".yaml", ".txt", ".csv"):
                assert SECRET not in f.read_text(errors="ignore"), f


def test_local_tracking_uri_on_a_multi_node_cluster_is_refused(two_node_cluster, model_cache, tmp_path):
    sweep = cluster_sweep(tmp_path / "sweep.yaml", model_cache, tmp_path / "s", f"sqlite:///{tmp_path}/m.db")
    out = subprocess.run([str(BIN / "dpo-sweep"), "validate", str(sweep), "--address", two_node_cluster["address"]],
                         env=two_node_cluster["env"], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "the Ray cluster has 2 nodes and trials on the others cannot reach it" in out.stderr
    assert "Traceback" not in out.stderr


def test_tracking_rule_without_a_cluster():
    assert check_tracking_for_cluster("sqlite:////x/mlflow.db", nodes=2, autoscales=False)
    assert check_tracking_for_cluster("sqlite:////x/mlflow.db", nodes=1, autoscales=True)
    assert not check_tracking_for_cluster("sqlite:////x/mlflow.db", nodes=1, autoscales=False)
    assert not check_tracking_for_cluster("http://10.0.0.5:5000", nodes=8, autoscales=True)


def test_preflight_refuses_sqlite_on_a_multi_node_cluster(make_sweep):
    with pytest.raises(PreflightError, match="trials on the others cannot reach it"):
        run_preflight(make_sweep(), ClusterView(cpus=16, gpus=0, nodes=3, joined=True), log=None)
