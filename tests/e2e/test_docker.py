"""docker-compose.yml: structure (always), `docker compose config` (when a compose CLI exists), and the
real stack under a Docker engine (marked `docker`)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"
BRIDGE = REPO / "docker" / "compose.bridge.yml"


def _compose_cmd() -> list[str] | None:
    """`docker compose` (v2 plugin), else `docker-compose` (v1.29+, Debian's package)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_wires_health_and_dependencies():
    d = yaml.safe_load(COMPOSE.read_text())
    svc = d["services"]
    assert {"redis", "llm", "llm-gpu", "worker", "edge"} <= set(svc)
    for name in ("redis", "llm", "llm-gpu", "worker", "edge"):
        assert svc[name]["healthcheck"]["test"], name
    for name in ("llm", "llm-gpu", "worker", "edge"):
        test = " ".join(svc[name]["healthcheck"]["test"])
        assert "healthcheck.py" in test, f"{name} must use the gRPC health check"
    assert all(svc[n]["network_mode"] == "host" for n in svc)
    assert svc["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert svc["edge"]["depends_on"]["worker"]["condition"] == "service_healthy"
    gpu = svc["llm-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "--tp" in gpu["command"] and gpu["profiles"] == ["gpu"]
    assert any(v.endswith(":/models:ro") for v in svc["edge"]["volumes"])
    for f in ("base", "server", "edge"):
        assert (REPO / "docker" / f"{f}.Dockerfile").is_file()
    edge_lines = [ln for ln in (REPO / "docker" / "edge.Dockerfile").read_text().splitlines()
                  if not ln.lstrip().startswith("#") and "import torch" not in ln]
    assert not any("torch" in ln for ln in edge_lines), "the edge image must not install torch"


def test_compose_config_validates():
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("no `docker compose` or `docker-compose` CLI on this machine")
    v2 = cmd == ["docker", "compose"]  # the bridge override needs compose v2's !reset
    for files in (["-f", str(COMPOSE)], *([["-f", str(COMPOSE), "-f", str(BRIDGE)]] if v2 else [])):
        for profile in ("cpu", "gpu"):
            out = subprocess.run([*cmd, *files, "--profile", profile, "config", "--quiet"], cwd=REPO,
                                 capture_output=True, text=True)
            assert out.returncode == 0, out.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_compose_stack_answers_a_device(tmp_path):
    """Bring the real stack up with a Docker engine, inject an event for a connected device, get the answer."""
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("no `docker compose` CLI on this machine")
    import os

    models = Path(os.environ.get("WAKELINE_MODELS", REPO / "models"))
    if not (models / "llm" / "dense" / "config.json").is_file() or not any((models / "kws" / "default").glob("*.onnx")):
        pytest.skip(f"no default models under {models} (set WAKELINE_MODELS to a folder with llm/dense and kws/default)")
    import numpy as np
    from wakeline.v1 import bus_pb2

    from services.bus import BusConfig, EventProducer, open_bus
    from services.edge.client import DeviceAudio, open_channel, stream_device
    from services.llm.testing import grpc_serving

    files = ["-f", str(COMPOSE)]  # host networking: the services listen on 127.0.0.1
    up = subprocess.run([*cmd, *files, "--profile", "cpu", "up", "-d"], cwd=REPO,
                        capture_output=True, text=True, timeout=1800)
    try:
        assert up.returncode == 0, up.stderr[-4000:]
        end = time.monotonic() + 600
        while time.monotonic() < end and not grpc_serving("127.0.0.1:50051"):
            time.sleep(2)
        assert grpc_serving("127.0.0.1:50061", "wakeline.v1.LlmService") and grpc_serving("127.0.0.1:50051")

        async def go():
            bus = await open_bus(BusConfig(url="redis://127.0.0.1:6379/0", spool_dir=str(tmp_path / "spool")))
            prod = EventProducer(bus, tmp_path / "spool")
            ev = bus_pb2.KeywordEvent(event_id=uuid.uuid4().hex, device_id="dev-docker", edge_node="edge-compose",
                                      keyword="lights on", created_unix_ms=int(time.time() * 1000))
            audio = DeviceAudio(np.zeros(8000, np.float32), 16000)
            async for r in stream_device(open_channel("127.0.0.1:50051"), "dev-docker", ["lights on"], audio,
                                         realtime=True, linger_s=60):
                if r.kind == "started":
                    await prod.publish_event(ev)
                elif r.kind == "answer":
                    await prod.close()
                    await bus.close()
                    return ev, r.response.answer
            return ev, None

        ev, ans = asyncio.run(asyncio.wait_for(go(), 120))
        assert ans is not None and ans.event_id == ev.event_id and ans.text and not ans.error
    finally:
        subprocess.run([*cmd, *files, "--profile", "cpu", "down", "-v"], cwd=REPO, capture_output=True, timeout=300)
