"""A small asyncio client of `wakeline.v1.LlmService` (used by the worker, the CLI and the bench)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from wakeline.v1 import llm_pb2, llm_pb2_grpc

from services.llm.server import SERVICE


def make_channel(target: str, token: str | None = None, tls_ca: Path | None = None,
                 options: list | None = None) -> grpc.aio.Channel:
    """An aio channel to `target` (host:port); TLS when `tls_ca` is given (a CA bundle or the server cert)."""
    opts = list(options or []) + [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    if tls_ca:
        creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
        if token:
            creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
        return grpc.aio.secure_channel(target, creds, options=opts)
    return grpc.aio.insecure_channel(target, options=opts)


def build_request(prompt: str | None = None, messages: list[dict] | None = None, *, max_tokens: int = 0,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 0.0, stop: list[str] | None = None,
                  seed: int | None = None, request_id: str = "") -> llm_pb2.GenerateRequest:
    """A GenerateRequest from a prompt or chat messages ({"role", "content"} dicts)."""
    sp = llm_pb2.SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens,
                                stop=stop or [])
    if seed is not None:
        sp.seed = seed
    req = llm_pb2.GenerateRequest(request_id=request_id, sampling=sp)
    if messages is not None:
        req.chat.messages.extend(llm_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages)
    else:
        req.prompt = prompt or ""
    return req


class LlmClient:
    """`async with LlmClient("127.0.0.1:50061") as c: await c.generate(req)`.

    Args:
        target: host:port of the service.
        token: bearer token sent as `authorization` metadata (plain channels too, for localhost).
        tls_ca: PEM file to verify the server with; None = plaintext.
    """

    def __init__(self, target: str, token: str | None = None, tls_ca: Path | None = None) -> None:
        self.channel = make_channel(target, token, tls_ca)
        self.stub = llm_pb2_grpc.LlmServiceStub(self.channel)
        self._md = (("authorization", f"Bearer {token}"),) if token and not tls_ca else None

    async def __aenter__(self) -> LlmClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def generate(self, req: llm_pb2.GenerateRequest, timeout: float | None = None) -> llm_pb2.GenerateResponse:
        """Unary Generate."""
        return await self.stub.Generate(req, timeout=timeout, metadata=self._md)

    async def generate_stream(self, req: llm_pb2.GenerateRequest,
                              timeout: float | None = None) -> AsyncIterator[llm_pb2.GenerateStreamResponse]:
        """GenerateStream: yields deltas; leaving the loop early cancels the call (and the server's work)."""
        call = self.stub.GenerateStream(req, timeout=timeout, metadata=self._md)
        try:
            async for msg in call:
                yield msg
        finally:
            call.cancel()

    async def abort(self, request_id: str) -> bool:
        return (await self.stub.Abort(llm_pb2.AbortRequest(request_id=request_id), metadata=self._md)).found

    async def model_info(self) -> llm_pb2.ModelInfoResponse:
        return await self.stub.ModelInfo(llm_pb2.ModelInfoRequest(), metadata=self._md)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll health until the LlmService is SERVING, or raise TimeoutError."""
        await wait_serving(self.channel, SERVICE, timeout)


async def wait_serving(channel: grpc.aio.Channel, service: str = "", timeout: float = 60.0) -> None:
    """Poll the standard health service of `channel` until `service` is SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    last = "no answer"
    while loop.time() < end:
        try:
            r = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            if r.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        except grpc.aio.AioRpcError as e:
            last = e.code().name
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{service or 'server'} not SERVING after {timeout:.0f}s (last: {last})")
