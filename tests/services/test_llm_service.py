"""LlmService over real gRPC on 127.0.0.1 with the real engine on a tiny random-weight Llama checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytest.importorskip("llm.engine", reason="the LLM engine (llm/engine.py) is not in this checkout yet")

from services.llm.client import LlmClient, build_request  # noqa: E402
from services.llm.server import LlmServer  # noqa: E402
from services.llm.settings import LlmSettings  # noqa: E402
from services.llm.testing import make_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", max_positions=4096)


@contextlib.asynccontextmanager
async def running(model, token: str | None = None, **kw):
    s = LlmSettings(model=model, port=0, host="127.0.0.1", auth_tokens=token or "", grace_s=0, **kw)
    srv = LlmServer(s)
    port = await srv.start()
    client = LlmClient(f"127.0.0.1:{port}", token=token)
    try:
        yield srv, client
    finally:
        await client.close()
        await srv.stop(0)


async def _wait_idle(srv, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if srv.runner.num_pending == 0 and not srv.engine.has_unfinished():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"work not freed: {srv.runner.stats()}, engine unfinished={srv.engine.has_unfinished()}")


def test_generate_matches_engine_and_stream_matches_generate(tiny_model):
    from llm.engine import Engine, SamplingParams

    ref = Engine.from_pretrained(str(tiny_model), max_batch_size=2)
    prompt = "turn the lights on"
    ref_ids = ref.generate_ids([ref.tokenizer.encode(prompt)], SamplingParams(max_tokens=12))[0]

    async def go():
        async with running(tiny_model) as (srv, c):
            r = await c.generate(build_request(prompt, max_tokens=12))
            assert list(r.token_ids) == ref_ids
            assert r.text == ref.tokenizer.decode(ref_ids)
            assert r.finish_reason == "length"
            assert r.usage.prompt_tokens == len(ref.tokenizer.encode(prompt)) and r.usage.completion_tokens == 12
            assert 0 < r.timing.ttft_ms <= r.timing.total_ms
            msgs = [m async for m in c.generate_stream(build_request(prompt, max_tokens=12))]
            assert len(msgs) >= 12 and msgs[-1].finished and msgs[-1].finish_reason == "length"
            assert not any(m.finished for m in msgs[:-1])
            assert [t for m in msgs for t in m.token_ids] == ref_ids
            assert "".join(m.text for m in msgs) == r.text
            assert msgs[-1].usage.completion_tokens == 12
            chat = await c.generate(build_request(messages=[{"role": "user", "content": "hi"}], max_tokens=3))
            assert chat.usage.prompt_tokens == len(srv.runner.encode_chat([{"role": "user", "content": "hi"}]))
            info = await c.model_info()
            assert info.context_length == srv.engine.max_context and info.num_parameters > 0
            assert info.architecture == "LlamaForCausalLM" and not info.moe

    asyncio.run(go())


def test_requests_join_a_running_batch(tiny_model):
    async def go():
        async with running(tiny_model) as (srv, c):
            long = c.generate_stream(build_request("the quick brown fox", max_tokens=1500))
            first = await long.__anext__()
            assert first.token_ids
            t0 = time.perf_counter()
            short = await c.generate(build_request("hello", max_tokens=4))
            joined_after = time.perf_counter() - t0
            # the long request is still running: the short one did not wait for it to finish
            assert srv.runner.num_pending == 1, "the long request should still be generating"
            assert short.usage.completion_tokens == 4
            await long.aclose()
            await _wait_idle(srv)
            assert joined_after < 5

    asyncio.run(go())


def test_abort_rpc_and_client_cancel_free_the_work(tiny_model):
    async def go():
        async with running(tiny_model) as (srv, c):
            # Abort RPC: the stream ends with finish_reason "abort"
            stream = c.generate_stream(build_request("hello world", max_tokens=3000, request_id="r-abort"))
            await stream.__anext__()
            assert await c.abort("r-abort") is True
            rest = [m async for m in stream]
            assert rest and rest[-1].finished and rest[-1].finish_reason == "abort"
            assert sum(len(m.token_ids) for m in rest) < 3000
            await _wait_idle(srv)
            assert await c.abort("r-abort") is False
            # client cancellation (the client leaves the stream): the server aborts the request
            stream = c.generate_stream(build_request("hello world", max_tokens=3000))
            for _ in range(3):
                await stream.__anext__()
            await stream.aclose()
            await _wait_idle(srv)
            # and unary Generate cancelled by the client
            task = asyncio.ensure_future(c.generate(build_request("hello", max_tokens=3000)))
            await asyncio.sleep(0.3)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await _wait_idle(srv)
            assert srv.runner.metrics.aborted._value.get() == 3

    asyncio.run(go())


def test_deadline_exceeded_frees_the_work(tiny_model):
    async def go():
        async with running(tiny_model) as (srv, c):
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await c.generate(build_request("hello", max_tokens=3000), timeout=0.5)
            assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await _wait_idle(srv)
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                async for _ in c.generate_stream(build_request("hello", max_tokens=3000), timeout=0.5):
                    pass
            assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await _wait_idle(srv)
            ok = await c.generate(build_request("hello", max_tokens=2), timeout=30)
            assert ok.usage.completion_tokens == 2

    asyncio.run(go())


def test_admission_control_refuses_at_once(tiny_model):
    async def go():
        async with running(tiny_model, max_pending_requests=2, max_pending_tokens=2000) as (srv, c):
            streams = [c.generate_stream(build_request("hello", max_tokens=900)) for _ in range(2)]
            for s in streams:
                await s.__anext__()
            t0 = time.perf_counter()
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await c.generate(build_request("hello", max_tokens=4))
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 requests pending" in ei.value.details()
            assert time.perf_counter() - t0 < 2.0
            for s in streams:
                await s.aclose()
            await _wait_idle(srv)
            # by tokens: one request's prompt + max_tokens over the bound
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await c.generate(build_request("hello", max_tokens=2000))
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "tokens" in ei.value.details()
            assert (await c.generate(build_request("hello", max_tokens=3))).usage.completion_tokens == 3

    asyncio.run(go())


def test_prompt_over_context_is_invalid_argument_with_numbers(tiny_model):
    async def go():
        async with running(tiny_model) as (srv, c):
            n_ctx = srv.engine.max_context
            prompt = "the quick brown fox " * n_ctx
            n = len(srv.runner.encode(prompt))
            for call in (c.generate(build_request(prompt)),
                         c.generate_stream(build_request(prompt)).__anext__()):
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await call
                assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert str(n) in ei.value.details() and str(n_ctx) in ei.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await c.generate(build_request(""))
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    asyncio.run(go())


def test_health_reflection_auth_and_metrics(tiny_model):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    from prometheus_client import generate_latest

    async def go():
        async with running(tiny_model, token="s3cret") as (srv, c):
            ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
            health = health_pb2_grpc.HealthStub(ch)
            r = await health.Check(health_pb2.HealthCheckRequest(service="wakeline.v1.LlmService"))
            assert r.status == health_pb2.HealthCheckResponse.SERVING  # no token needed for health
            anon = LlmClient(f"127.0.0.1:{srv.port}")
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await anon.generate(build_request("hello", max_tokens=2))
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            bad = LlmClient(f"127.0.0.1:{srv.port}", token="wrong")
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                async for _ in bad.generate_stream(build_request("hello", max_tokens=2)):
                    pass
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            r = await c.generate(build_request("hello", max_tokens=5))
            assert r.usage.completion_tokens == 5
            text = generate_latest(srv.runner.metrics.registry).decode()
            assert "wakeline_llm_ttft_seconds_count 2.0" in text  # the warm-up and this request
            assert "wakeline_llm_inter_token_seconds_count" in text
            assert "wakeline_llm_kv_cache_usage_ratio" in text
            await anon.close()
            await bad.close()
            await ch.close()
        # reflection lists the service (sync API in a thread: the descriptor database is blocking)
        return srv.port

    asyncio.run(go())

    async def refl():
        async with running(tiny_model) as (srv, _):
            def names():
                with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                    return ProtoReflectionDescriptorDatabase(ch).get_services()
            return await asyncio.to_thread(names)

    assert "wakeline.v1.LlmService" in asyncio.run(refl())


def test_tls_with_bearer_token(tiny_model, tmp_path):
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=IP:127.0.0.1,DNS:localhost"], capture_output=True)
    if r.returncode:
        pytest.skip(f"openssl cannot make a test certificate: {r.stderr.decode()[-200:]}")
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-a\ntok-b\n")

    async def go():
        async with running(tiny_model, tls_cert=cert, tls_key=key, auth_tokens_file=tokens) as (srv, _):
            target = f"127.0.0.1:{srv.port}"
            async with LlmClient(target, token="tok-b", tls_ca=cert) as c:
                assert (await c.generate(build_request("hello", max_tokens=3))).usage.completion_tokens == 3
            async with LlmClient(target, token="nope", tls_ca=cert) as c:
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await c.generate(build_request("hello", max_tokens=3))
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            async with LlmClient(target, token="tok-a") as plain:  # plaintext to a TLS port fails
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await plain.generate(build_request("hello", max_tokens=3), timeout=5)
                assert ei.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    asyncio.run(go())


def test_engine_failure_fails_requests_and_turns_health_off(tiny_model):
    async def go():
        async with running(tiny_model) as (srv, c):
            def broken_step():  # fault injection into the real engine: a device error mid-step
                raise RuntimeError("CUDA error: device lost")

            srv.engine.step = broken_step
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await c.generate(build_request("hello", max_tokens=5))
            assert ei.value.code() == grpc.StatusCode.INTERNAL and "device lost" in ei.value.details()
            await asyncio.sleep(0.1)
            ch = grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}")
            r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
            assert r.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await ch.close()
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await c.generate(build_request("hello", max_tokens=5))
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(go())


def test_prefill_graphs_setting_reaches_the_engine(tiny_model, monkeypatch):
    from services.llm.server import load_engine

    monkeypatch.setenv("WAKELINE_LLM_PREFILL_GRAPHS", "1")
    s = LlmSettings(model=tiny_model)
    assert s.prefill_graphs is True
    seen = {}
    import llm.engine

    real = llm.engine.Engine.from_pretrained.__func__

    def spy(cls, path, **kw):
        seen.update(kw)
        return real(cls, path, **kw)

    monkeypatch.setattr(llm.engine.Engine, "from_pretrained", classmethod(spy))
    eng = load_engine(s)
    assert seen["prefill_graphs"] is True and seen["max_prefill_tokens_per_step"] == 256
    assert eng.prefill_graphs is None  # CPU: no CUDA graphs, the prefill runs eager


def test_cute_prefill_setting_reaches_the_engine_and_falls_back_on_cpu(tiny_model, monkeypatch):
    from services.llm.server import load_engine

    assert load_engine(LlmSettings(model=tiny_model)).cute_prefill == {}  # off by default
    monkeypatch.setenv("WAKELINE_LLM_CUTE_PREFILL", "1")
    eng = load_engine(LlmSettings(model=tiny_model))
    assert eng.cute_prefill == {"attention": "not a CUDA device", "swiglu": "not a CUDA device"}


def test_decode_steps_setting_reaches_the_engine_and_keeps_greedy_output(tiny_model, monkeypatch):
    from services.llm.server import load_engine

    base = load_engine(LlmSettings(model=tiny_model))
    monkeypatch.setenv("WAKELINE_LLM_DECODE_STEPS", "8")
    s = LlmSettings(model=tiny_model)
    assert s.decode_steps == 8 and s.compile is False
    eng = load_engine(s)
    assert eng.decode_steps == 8 and base.decode_steps == 1
    prompts = [[5, 6, 7, 8], [9, 10]]
    from llm.sampling import SamplingParams

    p = SamplingParams(max_tokens=12)
    assert eng.generate_ids(prompts, p) == base.generate_ids(prompts, p)
    monkeypatch.setenv("WAKELINE_LLM_DECODE_STEPS", "0")
    with pytest.raises(ValueError):
        LlmSettings(model=tiny_model)


def test_a_second_server_on_a_held_port_fails_instead_of_sharing_it(tiny_model):
    async def go():
        async with running(tiny_model) as (srv, _):
            other = LlmServer(LlmSettings(model=tiny_model, port=srv.port, host="127.0.0.1", grace_s=0),
                              engine=srv.engine)
            with pytest.raises(RuntimeError):
                await other.start()
            if other.server is not None:
                await other.server.stop(0)

    asyncio.run(go())
