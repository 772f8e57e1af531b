"""`wakeline up` as a real process: embedded Redis, LLM service, worker, edge node; clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
from wakeline.v1 import bus_pb2

from tests.conftest import REPO, free_port


def test_up_starts_everything_answers_and_stops_cleanly(tmp_path):
    pytest.importorskip("llm.engine", reason="the LLM engine (llm/engine.py) is not in this checkout yet")
    kws = pytest.importorskip("kws.export", reason="kws.export (untrained model export) not in this checkout")
    import numpy as np

    from services.bus import BusConfig, EventProducer, open_bus
    from services.edge.client import DeviceAudio, open_channel, stream_device
    from services.llm.testing import grpc_serving, make_tiny_llama

    llm_dir = make_tiny_llama(tmp_path / "llm")
    kws_dir = kws.export_untrained(tmp_path / "kws")
    edge_port, llm_port = free_port(), free_port()
    data = tmp_path / "stack"
    up = subprocess.Popen([sys.executable, "-u", "-m", "services.cli", "up", "--llm-model", str(llm_dir),
                           "--kws-model", str(kws_dir), "--edge-port", str(edge_port), "--llm-port", str(llm_port),
                           "--llm-metrics-port", "0", "--edge-metrics-port", "0", "--data-dir", str(data),
                           "--node-id", "edge-up"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, start_new_session=True)
    lines: list[str] = []
    children: list[str] = []
    try:
        end = time.monotonic() + 180
        while time.monotonic() < end:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C stops it"):
                break
        out = "".join(lines)
        assert "wakeline stack is up" in out, out
        redis_url = re.search(r"redis\s+(unix://\S+)", out).group(1)
        assert grpc_serving(f"127.0.0.1:{llm_port}", "wakeline.v1.LlmService")
        assert grpc_serving(f"127.0.0.1:{edge_port}")

        async def roundtrip():
            bus = await open_bus(BusConfig(url=redis_url, spool_dir=str(tmp_path / "spool")))
            prod = EventProducer(bus, tmp_path / "spool")
            ev = bus_pb2.KeywordEvent(event_id=uuid.uuid4().hex, device_id="dev-up", edge_node="edge-up",
                                      keyword="lights on", created_unix_ms=int(time.time() * 1000))
            got = None
            audio = DeviceAudio(np.zeros(8000, np.float32), 16000)
            async for r in stream_device(open_channel(f"127.0.0.1:{edge_port}"), "dev-up", ["lights on"], audio,
                                         realtime=True, linger_s=30):
                if r.kind == "started":
                    await prod.publish_event(ev)
                elif r.kind == "answer":
                    got = r.response.answer
                    break
            await prod.close()
            await bus.close()
            return ev, got

        ev, ans = asyncio.run(asyncio.wait_for(roundtrip(), 60))
        assert ans is not None and ans.event_id == ev.event_id and not ans.error
        children = subprocess.run(["pgrep", "-P", str(up.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 4  # redis, llm, worker, edge
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            rc = up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise
    rest = up.stdout.read()
    assert rc == 0 and "wakeline stack stopped" in rest
    left = [pid for pid in children if os.path.exists(f"/proc/{pid}")]
    assert left == [], f"processes left behind: {left}"


def test_stack_refuses_two_parts_on_one_port_and_free_port_never_repeats(tmp_path):
    from services.stack.stack import StackConfig, StackError
    from services.testing import free_port

    cfg = StackConfig(llm_model=REPO / "models/llm/dense", kws_model=REPO / "models/kws/default",
                      edge_port=50111, llm_port=50111)
    with pytest.raises(StackError, match="ports are both 50111"):
        cfg.check()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
