"""Helpers for tests that start real servers: free ports, readiness, stopping by pid."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


def kill_tree(pid: int) -> None:
    """SIGTERM a process and its descendants, SIGKILL what is left after 10 s."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [*proc.children(recursive=True), proc]
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()
