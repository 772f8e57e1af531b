"""Faults around a real edge node: Redis down while keywords fire, and the drain on SIGTERM."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
import redis

from services.bus.core import decode
from services.edge.client import DeviceAudio, open_channel, stream_device
from services.edge.testing import EdgeProcess, health_status
from tests.conftest import RedisProcess
from tests.services.test_edge_service import edge_model_dir, metric  # noqa: F401 - fixture

EVENTS = "wakeline:{bus}:events"


def speechlike(seconds: float, rate: int = 16000) -> np.ndarray:
    """Loud amplitude-modulated noise: enough for an untrained model to cross a tiny threshold."""
    rng = np.random.default_rng()
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * rng.standard_normal(t.size) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


async def collect(target, device, seconds, realtime=False, keywords=(("lights on", 0.001),)):
    return [r async for r in stream_device(open_channel(target), device, list(keywords),
                                           DeviceAudio(speechlike(seconds), 16000), realtime=realtime)]


@pytest.fixture
def node_and_redis(edge_model_dir):  # noqa: F811
    r = RedisProcess().start()
    p = EdgeProcess(edge_model_dir, r.url, node_id="edge-faults", env={"WAKELINE_EDGE_GRACE_S": "2"})
    p.start()
    yield p, r
    p.cleanup()
    r.kill()


def test_redis_down_events_spooled_then_delivered(node_and_redis):
    node, rp = node_and_redis
    rp.kill()
    got = asyncio.run(asyncio.wait_for(collect(node.target, "dev-outage", 6.0), 60))
    dets = [r.response.detection for r in got if r.kind == "detection"]
    assert len(dets) >= 2, "a 0.001 threshold must fire at least every refractory period"
    for _ in range(100):  # the publish falls back to the spool after the connect timeout
        if metric(node, "wakeline_edge_spool_depth") >= len(dets):
            break
        time.sleep(0.1)
    assert metric(node, "wakeline_edge_spool_depth") >= len(dets)
    rp.start()  # same port, same AOF dir
    client = redis.Redis.from_url(rp.url)
    deadline = time.time() + 30
    ids: list[str] = []
    while time.time() < deadline:
        entries = client.xrange(EVENTS) if client.exists(EVENTS) else []
        events = [decode(fields) for _, fields in entries]
        ids = [e.event_id for e in events]
        if len(ids) >= len(dets):
            break
        time.sleep(0.2)
    assert ids == [d.event_id for d in dets]  # all of them, in order, once
    ev = {e.event_id: e for e in events}
    for d in dets:
        e = ev[d.event_id]
        assert (e.device_id, e.edge_node, e.keyword) == ("dev-outage", "edge-faults", d.keyword)
        assert e.end_time == pytest.approx(d.end_time) and e.score == pytest.approx(d.score) and e.trace_id
    assert node.alive()


def test_sigterm_drains(node_and_redis):
    node, _ = node_and_redis

    async def go():
        out = []
        task = asyncio.ensure_future(collect(node.target, "dev-drain", 30.0, realtime=True))
        while metric(node, "wakeline_edge_streams_open") < 1:
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        node.proc.terminate()
        try:
            out = await task
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as e:
            code = e.code()
        return out, code, time.monotonic() - t0

    _, code, took = asyncio.run(asyncio.wait_for(go(), 60))
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED), code
    assert took < 10, "the 2 s grace period bounds the drain"
    assert node.proc.wait(timeout=20) == 0
    assert health_status(node.target) is None
    assert "edge node stopped" in node.log_tail()


def test_processes_share_the_port(edge_model_dir, tmp_path):  # noqa: F811
    r = RedisProcess().start()
    p = EdgeProcess(edge_model_dir, r.url, node_id="edge-mp", env={"WAKELINE_EDGE_PROCESSES": "2",
                                                                  "WAKELINE_EDGE_GRACE_S": "1"})
    try:
        p.start()

        async def nodes_seen():
            seen = set()
            for i in range(24):  # fresh connections from fresh source ports spread over the processes
                async for resp in stream_device(open_channel(p.target), f"dev-{i}", ["lights on"],
                                                DeviceAudio(speechlike(0.2), 16000), realtime=False):
                    if resp.kind == "started":
                        seen.add(resp.response.started.edge_node)
                if len(seen) == 2:
                    break
            return seen

        assert asyncio.run(asyncio.wait_for(nodes_seen(), 60)) == {"edge-mp-0", "edge-mp-1"}
        assert p.terminate() == 0
        assert p.log_tail(1 << 20).count("edge node stopped") == 2
    finally:
        p.cleanup()
        r.kill()
