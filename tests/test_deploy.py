"""deploy/: cluster YAMLs pass Ray's own schema, the RayJob carries what KubeRay needs, safe defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.config import load_sweep_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CLUSTERS = ["aws.yaml", "gcp.yaml", "onprem.yaml"]


@pytest.mark.parametrize("name", CLUSTERS)
def test_cluster_yaml_passes_rays_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((DEPLOY / name).read_text())
    validate_config(prepare_config(cfg))  # raises on any schema error


@pytest.mark.parametrize("name", CLUSTERS)
def test_cluster_yaml_opens_nothing_to_the_world(name):
    text = (DEPLOY / name).read_text()
    cfg = yaml.safe_load(text)
    assert "0.0.0.0" not in text
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    for group in (cfg.get("provider", {}).get("security_group") or {}).get("IpPermissions", []):
        assert (group["FromPort"], group["ToPort"]) == (22, 22)  # SSH only, from one address
        assert all(r["CidrIp"].endswith("/32") for r in group["IpRanges"])
    assert "MLFLOW_TRACKING_PASSWORD" not in text


def test_rayjob_manifest_has_what_kuberay_needs():
    job = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("dpo-sweep run ") and "--address auto" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"].startswith("2.60")
    head = cluster["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    head_container = head["template"]["spec"]["containers"][0]
    assert head_container["image"]
    env = {e["name"]: e for e in head_container["env"]}
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert "secretKeyRef" in env[var]["valueFrom"] and "value" not in env[var]
    workers = cluster["workerGroupSpecs"][0]
    container = workers["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    assert "gpu_worker" in workers["rayStartParams"]["resources"]


def test_dockerfile_installs_the_package_on_rays_gpu_image():
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.splitlines()[[ln.startswith("FROM") for ln in text.splitlines()].index(True)].startswith(
        "FROM rayproject/ray:2.60.0")
    for package in ("orchestrator", "trainables", "search_spaces", "pyproject.toml"):
        assert package in text
    assert 'pip install --no-cache-dir "/opt/dpo-sweep' in text


def test_cluster_sweep_yaml_is_a_valid_sweep_config():
    cfg = load_sweep_config(DEPLOY / "sweep-cluster.yaml")
    assert cfg.resources.gpu_per_trial == "auto" and cfg.resources.custom == {"gpu_worker": 1}
    assert cfg.tracking.uri.startswith("http") and cfg.storage.path.startswith("s3://")


def test_submit_script_runs_a_sweep_and_refuses_bad_input_cleanly(tmp_path):
    out = subprocess.run([sys.executable, str(DEPLOY / "submit_sweep.py")], capture_output=True, text=True,
                         check=False)
    assert out.returncode != 0 and "usage: submit_sweep.py SWEEP_YAML" in out.stderr
    out = subprocess.run([sys.executable, str(DEPLOY / "submit_sweep.py"), str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr
