"""Where trials will run, as preflight sees it: this machine, or the Ray cluster the driver joined.

Preflight checks resources against a `ClusterView`, never against the host directly: a sweep joining
a cluster is checked against the cluster, and tests hand in the view they mean (a 16-core machine
with one 80 GB GPU, or one with none) whatever machine they run on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClusterView:
    cpus: float
    gpus: float
    gpu_memory_bytes: int | None = None  # of one GPU; None when unknown (a joined cluster)
    nodes: int = 1
    custom: dict[str, float] = field(default_factory=dict)  # custom Ray resources (a joined cluster)
    joined: bool = False  # a Ray cluster (--address), not this machine

    @property
    def where(self) -> str:
        return "the Ray cluster" if self.joined else "this machine"


def local_view() -> ClusterView:
    """This machine: its CPUs, and the GPUs torch sees."""
    import torch

    gpus = torch.cuda.device_count()
    memory = torch.cuda.get_device_properties(0).total_memory if gpus else None
    return ClusterView(cpus=float(os.cpu_count() or 1), gpus=float(gpus), gpu_memory_bytes=memory)


def joined_view() -> ClusterView:
    """The Ray cluster this process has joined: its total resources and alive nodes."""
    import ray

    total = ray.cluster_resources()
    standard = {"CPU", "GPU", "memory", "object_store_memory"}
    custom = {k: v for k, v in total.items() if k not in standard and not k.startswith(("node:", "accelerator_type"))}
    return ClusterView(cpus=total.get("CPU", 0.0), gpus=total.get("GPU", 0.0), custom=custom, joined=True,
                       nodes=sum(1 for n in ray.nodes() if n.get("Alive")))


def start_ray(address: str | None, env: dict[str, str] | None = None) -> bool:
    """Join `address` or start a local Ray; True when this process started (and must stop) it.
    `env` reaches every worker through the runtime env (trials on other nodes do not inherit the
    driver's environment): MLflow credentials travel this way, never through configs or params."""
    import ray

    if ray.is_initialized():
        return False
    common = {"log_to_driver": False, "logging_level": logging.WARNING}
    if env:
        common["runtime_env"] = {"env_vars": dict(env)}
    if address:
        ray.init(address=address, **common)
        return False
    # A local run binds nothing beyond 127.0.0.1 and needs no dashboard. address="local": a Ray of its own, even
    # where `ray start` (or `ray up` to this machine) left a cluster that a bare ray.init() would join - and that
    # cluster's end, or a sweep's shutdown of it, would take the other's trials with it.
    ray.init(address="local", include_dashboard=False, **common)
    return True


def view_for(address: str | None, env: dict[str, str] | None = None) -> ClusterView:
    """The cluster at `address` (joined now), or this machine when there is none."""
    if address:
        start_ray(address, env)
        return joined_view()
    return local_view()
