"""The edge node as a real subprocess on a real port with a real Redis: protocol, routing, bad input.

Protocol tests need any valid spotter model, not a trained one: see `edge_model_dir`.
"""

from __future__ import annotations

import asyncio
import os
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from wakeline.v1 import audio_pb2, bus_pb2, edge_pb2, edge_pb2_grpc

from services.edge.audio import encode_audio
from services.edge.client import DeviceAudio, auth_metadata, keyword_specs, open_channel, stream_device
from services.edge.testing import EdgeProcess, health_status

PCM16, F32 = audio_pb2.AUDIO_ENCODING_PCM16, audio_pb2.AUDIO_ENCODING_FLOAT32
MAX_KEYWORDS = 4
MAX_CHUNK = 8192


@pytest.fixture(scope="session")
def edge_model_dir(tmp_path_factory) -> Path:
    """A loadable spotter model: $WAKELINE_TEST_KWS_MODEL_DIR, else a fresh untrained export (valid, not
    meaningful: protocol tests need no trained model)."""
    env = os.environ.get("WAKELINE_TEST_KWS_MODEL_DIR")
    if env:
        return Path(env)
    try:
        from kws.export import export_untrained
    except ImportError as e:
        pytest.skip(f"kws.export.export_untrained unavailable ({e}); set WAKELINE_TEST_KWS_MODEL_DIR")
    return export_untrained(tmp_path_factory.mktemp("kws-untrained"))


@pytest.fixture(scope="module")
def node(redis_mod, edge_model_dir):
    p = EdgeProcess(edge_model_dir, redis_mod.url, node_id="edge-t1",
                    env={"WAKELINE_EDGE_MAX_KEYWORDS": str(MAX_KEYWORDS),
                         "WAKELINE_EDGE_MAX_CHUNK_BYTES": str(MAX_CHUNK), "WAKELINE_EDGE_ANSWER_TTL_S": "30"})
    p.start()
    yield p
    assert p.alive(), "the edge node died during the tests:\n" + p.log_tail()
    p.cleanup()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def config(device="dev-1", keywords=("lights on", "stop music"), rate=16000, enc=PCM16, ch=1):
    return edge_pb2.StreamRequest(config=edge_pb2.StreamConfig(
        device_id=device, format=audio_pb2.AudioFormat(sample_rate=rate, encoding=enc, num_channels=ch),
        keywords=keyword_specs(keywords)))


def chunk(data: bytes, seq: int = 0):
    return edge_pb2.StreamRequest(audio=audio_pb2.AudioChunk(data=data, seq=seq))


async def exchange(target, requests, token=None):
    """Send `requests`, half-close, collect all responses; returns (responses, status code, details)."""
    async def gen():
        for r in requests:
            yield r

    out = []
    async with open_channel(target) as ch:
        call = edge_pb2_grpc.EdgeServiceStub(ch).Stream(gen(), metadata=auth_metadata(token))
        try:
            async for resp in call:
                out.append(resp)
        except grpc.aio.AioRpcError as e:
            return out, e.code(), e.details()
    return out, grpc.StatusCode.OK, ""


def metric(node: EdgeProcess, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def noise(seconds=0.5, rate=16000):
    return (np.random.default_rng().standard_normal(int(seconds * rate)) * 0.05).astype(np.float32)


def test_health_reflection_and_metrics(node):
    assert health_status(node.target) == "SERVING"
    assert health_status(node.target, "wakeline.v1.EdgeService") == "SERVING"
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    ch = grpc.insecure_channel(node.target)
    try:
        services = ProtoReflectionDescriptorDatabase(ch).get_services()
    finally:
        ch.close()
    assert "wakeline.v1.EdgeService" in services and "grpc.health.v1.Health" in services
    assert metric(node, "wakeline_edge_streams_open") >= 0
    assert metric(node, "process_cpu_seconds_total") > 0  # process-wide metrics (bus, process) ride along
    assert metric(node, "wakeline_edge_spool_depth") == 0


def test_stream_decodes_any_rate_and_reports_enrollment(node):
    x = noise(1.0, 44100)
    requests = [config(rate=44100, ch=2, enc=F32)] + [
        chunk(encode_audio(np.stack([x[i:i + 882]] * 2, 1), F32), seq=k + 1)
        for k, i in enumerate(range(0, x.size, 882))]
    before = metric(node, "wakeline_edge_audio_seconds_total")
    out, code, details = run(exchange(node.target, requests))
    assert code == grpc.StatusCode.OK, details
    started = out[0].started
    assert started.edge_node == "edge-t1" and started.session_id and started.model_sample_rate >= 8000
    assert [k.text for k in started.keywords] == ["lights on", "stop music"]
    assert all(k.phonemes and 0.0 <= k.threshold <= 1.0 and k.auto_threshold for k in started.keywords)
    assert metric(node, "wakeline_edge_audio_seconds_total") - before == pytest.approx(1.0, abs=0.01)


def test_live_keyword_changes_and_enrollment_rpcs(node):
    async def go():
        updates: asyncio.Queue = asyncio.Queue()
        audio = DeviceAudio(noise(3.0), 16000)
        seen = []
        async with open_channel(node.target) as ch:
            stub = edge_pb2_grpc.EdgeServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.ListKeywords(edge_pb2.ListKeywordsRequest(device_id="dev-live"))
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            async for r in stream_device(ch, "dev-live", ["lights on"], audio, realtime=True, updates=updates):
                seen.append(r)
                if r.kind == "started":
                    enrolled = await stub.Enroll(edge_pb2.EnrollRequest(
                        device_id="dev-live", keywords=keyword_specs([("open the door", 0.8)])))
                    assert [(k.text, round(k.threshold, 3), k.auto_threshold) for k in enrolled.keywords] == [
                        ("open the door", 0.8, False)]
                    listed = await stub.ListKeywords(edge_pb2.ListKeywordsRequest(device_id="dev-live"))
                    assert sorted(k.text for k in listed.keywords) == ["lights on", "open the door"]
                    removed = await stub.RemoveKeyword(edge_pb2.RemoveKeywordRequest(device_id="dev-live",
                                                                                      text="lights on"))
                    assert removed.removed
                    gone = await stub.RemoveKeyword(edge_pb2.RemoveKeywordRequest(device_id="dev-live", text="nope"))
                    assert not gone.removed
                    updates.put_nowait(edge_pb2.KeywordUpdate(add=keyword_specs(["play jazz"]),
                                                              remove=["open the door"]))
        return seen

    seen = run(go())
    changes = [[k.text for k in r.response.keywords.keywords] for r in seen if r.kind == "keywords"]
    assert changes[-1] == ["play jazz"], changes
    assert ["lights on", "open the door"] in changes


BAD_CASES = {
    "audio before config": ([chunk(b"\0\0")], "first message of a stream must be a StreamConfig"),
    "unspecified encoding": ([config(enc=audio_pb2.AUDIO_ENCODING_UNSPECIFIED)], "unsupported audio encoding"),
    "rate too low": ([config(rate=7000)], "outside 8000..48000"),
    "rate too high": ([config(rate=96000)], "outside 8000..48000"),
    "odd pcm16 bytes": ([config(), chunk(b"\0" * 101)], "not a whole number of PCM16 frames"),
    "float32 not multiple of 4": ([config(enc=F32), chunk(b"\0" * 10)], "not a whole number of FLOAT32"),
    "nan samples": ([config(enc=F32), chunk(np.array([0.1, np.nan], "<f4").tobytes())], "NaN or infinite"),
    "inf samples": ([config(enc=F32), chunk(np.array([np.inf, 0.1], "<f4").tobytes())], "NaN or infinite"),
    "chunk too big": ([config(), chunk(b"\0" * (MAX_CHUNK + 2))], f"exceeds the limit of {MAX_CHUNK} bytes"),
    "empty keyword": ([config(keywords=["lights on", "   "])], "keyword text must not be empty"),
    "too many keywords": ([config(keywords=[f"word {w}" for w in "abcdefg"])], f"limit of {MAX_KEYWORDS}"),
    "unpronounceable keyword": ([config(keywords=["@@@ ###"])], "cannot enroll keyword"),
    "bad threshold": ([config(keywords=[("lights on", 1.5)])], "outside (0, 1)"),
    "empty device id": ([config(device="")], "device_id must not be empty"),
    "second config": ([config(), config()], "StreamConfig may only be sent once"),
    "seq gap": ([config(), chunk(b"\0\0", 1), chunk(b"\0\0", 3)], "chunks were lost or repeated"),
    "update over limit": ([config(keywords=["a b", "c d", "e f"]),
                           edge_pb2.StreamRequest(update=edge_pb2.KeywordUpdate(add=keyword_specs(["g h", "i j"])))],
                          f"limit of {MAX_KEYWORDS}"),
}


def test_malformed_inputs_get_invalid_argument_and_others_keep_working(node):
    async def go():
        # A healthy stream stays open at real-time pace the whole time.
        audio = DeviceAudio(noise(12.0), 16000)
        healthy = asyncio.ensure_future(_collect(stream_device(open_channel(node.target), "dev-healthy", ["lights on"],
                                                               audio, realtime=True)))
        results = {}
        for name, (requests, needle) in BAD_CASES.items():
            _, code, details = await exchange(node.target, requests)
            results[name] = (code, details, needle)
        stats = await healthy
        return results, stats

    results, healthy = run(go())
    for name, (code, details, needle) in results.items():
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {code} {details}"
        assert needle in details, f"{name}: {details!r} lacks {needle!r}"
    assert healthy and healthy[0].kind == "started"
    assert node.alive() and health_status(node.target) == "SERVING"


async def _collect(agen):
    return [r async for r in agen]


def test_answers_reach_their_device_only_and_wait_for_reconnect(node, redis_mod):
    from services.bus.core import BusConfig, open_bus
    from services.bus.producer import ReplyProducer

    async def go():
        bus = await open_bus(BusConfig(url=redis_mod.url))
        replies = ReplyProducer(bus)
        got: dict[str, list] = {"dev-a": [], "dev-b": []}
        started = {d: asyncio.Event() for d in got}

        async def device(dev):
            async for r in stream_device(open_channel(node.target), dev, ["lights on"], DeviceAudio(noise(0.2), 16000),
                                         realtime=True, linger_s=2.5):
                if r.kind == "started":
                    started[dev].set()
                elif r.kind == "answer":
                    got[dev].append(r.response.answer)

        tasks = [asyncio.ensure_future(device(d)) for d in got]
        for e in started.values():
            await e.wait()
        for dev, text in (("dev-a", "for a"), ("dev-a", "again a"), ("dev-c", "for c, offline")):
            await replies.publish_answer(bus_pb2.Answer(answer_id=os.urandom(8).hex(), event_id="e", device_id=dev,
                                                        edge_node="edge-t1", text=text))
        await asyncio.gather(*tasks)
        # dev-c connects after its answer was written: it is handed over at once.
        late = []
        async for r in stream_device(open_channel(node.target), "dev-c", ["lights on"], DeviceAudio(noise(0.2), 16000),
                                     realtime=True, linger_s=0.5):
            if r.kind == "answer":
                late.append(r.response.answer.text)
        await replies.close()
        await bus.close()
        return got, late

    got, late = run(go())
    assert [a.text for a in got["dev-a"]] == ["for a", "again a"]
    assert got["dev-b"] == []
    assert late == ["for c, offline"]


def test_client_disconnect_mid_stream(node):
    async def go():
        ch = open_channel(node.target)
        gen = stream_device(ch, "dev-gone", ["lights on"], DeviceAudio(noise(30.0), 16000), realtime=True)
        async for r in gen:
            if r.kind == "started":
                break
        await asyncio.sleep(0.3)
        await gen.aclose()  # cancels the RPC with audio still flowing
        await ch.close()
        for _ in range(50):
            if metric(node, "wakeline_edge_streams_open") == 0:
                break
            await asyncio.sleep(0.1)
        return metric(node, "wakeline_edge_streams_open")

    assert run(go()) == 0
    out, code, details = run(exchange(node.target, [config(device="dev-gone"), chunk(encode_audio(noise(0.2)))]))
    assert code == grpc.StatusCode.OK, details
    assert out[0].started.session_id


def test_reconnect_replaces_the_older_stream(node):
    async def go():
        first_started = asyncio.Event()
        codes = {}

        async def first():
            try:
                async for r in stream_device(open_channel(node.target), "dev-dup", ["lights on"],
                                             DeviceAudio(noise(10.0), 16000), realtime=True):
                    if r.kind == "started":
                        first_started.set()
                codes["first"] = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as e:
                codes["first"] = (e.code(), e.details())

        t = asyncio.ensure_future(first())
        await first_started.wait()
        out, code, _ = await exchange(node.target, [config(device="dev-dup"), chunk(encode_audio(noise(0.1)))])
        await asyncio.wait_for(t, 10)
        return codes["first"], out, code

    first, out, code = run(go())
    assert first[0] == grpc.StatusCode.ABORTED and "newer stream" in first[1]
    assert code == grpc.StatusCode.OK and out[0].started.session_id
