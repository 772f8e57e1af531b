"""Auth, TLS and resource limits of a real edge node subprocess."""

from __future__ import annotations

import asyncio
import subprocess

import grpc
import numpy as np
import pytest
from wakeline.v1 import audio_pb2, edge_pb2, edge_pb2_grpc

from services.edge.client import DeviceAudio, auth_metadata, open_channel, stream_device
from services.edge.testing import EdgeProcess, health_status
from tests.conftest import RedisProcess
from tests.services.test_edge_service import config, edge_model_dir  # noqa: F401 - fixture

ROOT, SCOPED = "root-token-1", "scoped-token-2"


def make_cert(d):
    key, cert = d / "key.pem", d / "cert.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                        "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       capture_output=True)
    if r.returncode:
        pytest.skip(f"openssl cannot make a test certificate: {r.stderr.decode()[-200:]}")
    return key, cert


@pytest.fixture(scope="module")
def secure_node(edge_model_dir, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("edge-sec")
    key, cert = make_cert(d)
    (d / "tokens").write_text(f"{ROOT}\n{SCOPED} kitchen-*\n")
    redis = RedisProcess().start()
    p = EdgeProcess(edge_model_dir, redis.url, node_id="edge-sec", env={
        "WAKELINE_EDGE_AUTH_TOKENS_FILE": str(d / "tokens"), "WAKELINE_EDGE_TLS_CERT": str(cert),
        "WAKELINE_EDGE_TLS_KEY": str(key), "WAKELINE_EDGE_MAX_STREAMS": "2",
        "WAKELINE_EDGE_MAX_MESSAGE_BYTES": "4096"})
    p.root_cert = cert.read_bytes()
    p.start()
    yield p
    assert p.alive(), p.log_tail()
    p.cleanup()
    redis.kill()


async def first_status(node, token, device="kitchen-1", requests=None):
    """Open a stream; return the status code it ends with (OK if it started and finished)."""
    async def gen():
        for r in requests or [config(device=device)]:
            yield r

    async with open_channel(node.target, node.root_cert) as ch:
        call = edge_pb2_grpc.EdgeServiceStub(ch).Stream(gen(), metadata=auth_metadata(token))
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_tls_and_tokens(secure_node):
    n = secure_node
    assert health_status(n.target, root_cert=n.root_cert) == "SERVING"  # probes need no token
    assert health_status(n.target) is None  # plaintext is refused on a TLS port
    assert run(first_status(n, None))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert run(first_status(n, "wrong"))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert run(first_status(n, ROOT, device="anything"))[0] == grpc.StatusCode.OK
    assert run(first_status(n, SCOPED, device="kitchen-9"))[0] == grpc.StatusCode.OK
    code, details = run(first_status(n, SCOPED, device="bedroom-1"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "bedroom-1" in details

    async def unary(token, device):
        async with open_channel(n.target, n.root_cert) as ch:
            try:
                await edge_pb2_grpc.EdgeServiceStub(ch).ListKeywords(
                    edge_pb2.ListKeywordsRequest(device_id=device), metadata=auth_metadata(token))
            except grpc.aio.AioRpcError as e:
                return e.code()

    assert run(unary(None, "kitchen-1")) == grpc.StatusCode.UNAUTHENTICATED
    assert run(unary(SCOPED, "bedroom-1")) == grpc.StatusCode.PERMISSION_DENIED
    assert run(unary(SCOPED, "kitchen-1")) == grpc.StatusCode.FAILED_PRECONDITION


def test_stream_and_message_limits(secure_node):
    n = secure_node

    async def go():
        started = asyncio.Event()
        count = 0

        async def hold(dev):
            nonlocal count
            audio = DeviceAudio(np.zeros(16000 * 3, np.float32), 16000)
            async for r in stream_device(open_channel(n.target, n.root_cert), dev, ["lights on"], audio,
                                         realtime=True, token=ROOT):
                if r.kind == "started":
                    count += 1
                    if count == 2:
                        started.set()

        holders = [asyncio.ensure_future(hold(f"hold-{i}")) for i in range(2)]
        await started.wait()
        third = await first_status(n, ROOT, device="third")
        await asyncio.gather(*holders)
        big = await first_status(n, ROOT, requests=[
            config(device="big"), edge_pb2.StreamRequest(audio=audio_pb2.AudioChunk(data=b"\0" * 8000))])
        after = await first_status(n, ROOT, device="after")
        return third, big, after

    third, big, after = run(go())
    assert third[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 2 streams" in third[1]
    assert big[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "message" in big[1].lower()
    assert after[0] == grpc.StatusCode.OK  # slots are given back when streams end
