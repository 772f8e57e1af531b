"""End to end through the edge: `wakeline device stream` (subprocess) -> edge node (subprocess, real
port) -> KeywordEvents on a real Redis -> Answers on the node's reply stream -> back to that
device, and to no other.

Two tests: the path itself, with thresholds low enough that any model fires (the shipped model,
or an untrained export before it exists), and keyword detection with the shipped model at its
own thresholds (skipped until `models/kws/default` exists)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import soundfile as sf
from wakeline.v1 import bus_pb2

from services.bus.core import BusConfig, decode, open_bus
from services.bus.producer import ReplyProducer
from services.edge.client import DeviceAudio, open_channel, stream_device
from services.edge.testing import REPO, EdgeProcess, utterance_track
from tests.conftest import RedisProcess

EVENTS = "wakeline:{bus}:events"
KEYWORDS = ["lights on", "stop music"]


def default_model() -> Path | None:
    d = Path(os.environ.get("WAKELINE_TEST_KWS_DEFAULT_DIR", REPO / "models" / "kws" / "default"))
    return d if (d / "encoder.onnx").exists() else None


@pytest.fixture(scope="module")
def any_model(tmp_path_factory) -> Path:
    shipped = default_model()
    if shipped is not None:
        return shipped
    try:
        from kws.export import export_untrained
    except ImportError as e:
        pytest.skip(f"no shipped model and no kws.export to make one ({e})")
    return export_untrained(tmp_path_factory.mktemp("kws-e2e"))


def two_keyword_wav(tmp_path) -> tuple[Path, list]:
    """eSpeak 'lights on' ... 'please stop music' as a 22.05 kHz stereo WAV (a device's format)."""
    import soxr

    samples, spans = utterance_track([1.0, "lights on", 1.5, "please stop music", 2.0])
    wav = tmp_path / "two-keywords.wav"
    sf.write(wav, soxr.resample(np.stack([samples, samples], 1), 16000, 22050), 22050)
    return wav, spans


async def answer_events(url: str, node: str, stop: asyncio.Event, seen: list) -> None:
    """Play the LLM worker: answer every KeywordEvent on the bus, addressed to its device."""
    bus = await open_bus(BusConfig(url=url))
    replies = ReplyProducer(bus)
    r = redis.asyncio.Redis.from_url(url)
    last = "0-0"
    try:
        while not stop.is_set():
            got = await r.xread({EVENTS: last}, block=200, count=100)
            for _, entries in got or []:
                for mid, fields in entries:
                    last = mid
                    ev = decode(fields)
                    seen.append(ev)
                    await replies.publish_answer(bus_pb2.Answer(
                        answer_id=f"ans-{ev.event_id}", event_id=ev.event_id, trace_id=ev.trace_id,
                        device_id=ev.device_id, edge_node=ev.edge_node, keyword=ev.keyword,
                        text=f"heard {ev.keyword}"))
    finally:
        await replies.close()
        await bus.close()
        await r.aclose()


def test_device_to_bus_and_back(tmp_path, any_model):
    wav, _ = two_keyword_wav(tmp_path)
    rp = RedisProcess().start()
    node = EdgeProcess(any_model, rp.url, node_id="edge-e2e").start()
    try:
        # thresholds that any model crosses: this test is about the path, not the model
        events, other, lines = asyncio.run(asyncio.wait_for(
            _run(node, rp.url, wav, [k + ":0.01" for k in KEYWORDS]), 120))
    finally:
        assert node.alive(), node.log_tail()
        node.cleanup()
        rp.kill()

    dets = [x for x in lines if x["type"] == "detection"]
    answers = [x for x in lines if x["type"] == "answer"]
    assert {d["keyword"] for d in dets} == set(KEYWORDS), lines
    assert all(d["client_latency_ms"] < 1000 for d in dets), dets
    # every detection is a KeywordEvent on the bus with the same id, and came back as an answer
    by_id = {e.event_id: e for e in events}
    for d in dets:
        e = by_id[d["event_id"]]
        assert (e.device_id, e.edge_node, e.keyword, e.attributes["room"]) == ("dev-e2e", "edge-e2e", d["keyword"],
                                                                               "kitchen")
        assert e.end_time == pytest.approx(d["end_time"]) and e.trace_id
    assert sorted(a["event_id"] for a in answers) == sorted(d["event_id"] for d in dets)
    assert all(a["device_id"] == "dev-e2e" and a["text"].startswith("heard ") for a in answers)
    assert other == [], "another device received answers that were not its own"


def test_shipped_model_detects_spoken_keywords(tmp_path):
    model = default_model()
    if model is None:
        pytest.skip("the shipped keyword model (models/kws/default) does not exist yet")
    wav, spans = two_keyword_wav(tmp_path)
    node = EdgeProcess(model, None, node_id="edge-e2e-kws").start()  # embedded Redis
    try:
        cmd = [sys.executable, "-m", "services.cli", "device", "stream", str(wav), "--target", node.target,
               "--device-id", "dev-kws", "--json", "--realtime"] + [a for k in KEYWORDS for a in ("--keyword", k)]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=90)
    finally:
        node.terminate()
        node.cleanup()
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.strip()]
    thresholds = {k["text"]: k["threshold"] for k in lines[0]["keywords"]}
    dets = [x for x in lines if x["type"] == "detection"]
    for text, start, end in spans:
        kw = "lights on" if "lights" in text else "stop music"
        hits = [d for d in dets if d["keyword"] == kw and start <= d.get("fired_time", 0.0) <= end + 1.0]
        assert hits, (f"the shipped model missed {kw!r} spoken at {start:.2f}-{end:.2f} s at its threshold "
                      f"{thresholds[kw]:.3f}; detections: {dets}")
        assert all(d["client_latency_ms"] < 1000 for d in hits), hits


async def _run(node: EdgeProcess, url: str, wav: Path, keywords: list[str]):
    stop = asyncio.Event()
    events: list = []
    worker = asyncio.ensure_future(answer_events(url, node.node_id, stop, events))
    other_answers: list = []

    async def other_device():
        quiet = DeviceAudio(np.zeros(16000 * 12, np.float32), 16000)
        async for r in stream_device(open_channel(node.target), "dev-other", KEYWORDS, quiet, realtime=True):
            if r.kind == "answer":
                other_answers.append(r.response.answer)

    other = asyncio.ensure_future(other_device())
    await asyncio.sleep(0.5)
    cmd = [sys.executable, "-m", "services.cli", "device", "stream", str(wav), "--target", node.target,
           "--device-id", "dev-e2e", "--json", "--realtime", "--wait", "4", "--attribute", "room=kitchen"]
    for k in keywords:
        cmd += ["--keyword", k]
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert time.monotonic() - t0 < 60
    await other
    stop.set()
    await worker
    lines = [json.loads(x) for x in out.decode().splitlines() if x.strip()]
    return events, other_answers, lines
