"""Bearer-token auth for the edge node: an interceptor (UNAUTHENTICATED) and per-token device scopes.

Token file format, one per line: `TOKEN` (any device) or `TOKEN DEVICE [DEVICE ...]` (only those
device ids; a trailing `*` in a device pattern matches any suffix). `#` starts a comment.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc

# Probes must work without credentials.
OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class TokenTable:
    """Accepted tokens and the device ids each may act for; empty = auth disabled."""

    def __init__(self, scopes: dict[str, tuple[str, ...] | None] | None = None) -> None:
        self.scopes = dict(scopes or {})

    @classmethod
    def load(cls, path: Path | None, tokens_csv: str | None) -> TokenTable:
        """Read tokens from a file (see module docstring) and/or a comma-separated env value."""
        scopes: dict[str, tuple[str, ...] | None] = {}
        for tok in (tokens_csv or "").split(","):
            if tok.strip():
                scopes[tok.strip()] = None
        if path is not None:
            if not Path(path).exists():
                raise FileNotFoundError(f"auth tokens file not found: {path}")
            for line in Path(path).read_text().splitlines():
                parts = line.split("#", 1)[0].split()
                if parts:
                    devices = tuple(parts[1:])
                    scopes[parts[0]] = None if not devices or "*" in devices else devices
        return cls(scopes)

    @property
    def enabled(self) -> bool:
        return bool(self.scopes)

    def valid(self, token: str | None) -> bool:
        return not self.enabled or (token is not None and token in self.scopes)

    def allows(self, token: str | None, device_id: str) -> bool:
        """Whether `token` may open or manage a session for `device_id`."""
        if not self.enabled:
            return True
        if token not in self.scopes:
            return False
        devices = self.scopes[token]
        if devices is None:
            return True
        return any(device_id == d or (d.endswith("*") and device_id.startswith(d[:-1])) for d in devices)


def bearer(metadata) -> str | None:
    """The token of an `authorization: Bearer <token>` metadata entry, if any."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            v = value.decode() if isinstance(value, bytes) else value
            if v[:7].lower() == "bearer ":
                return v[7:].strip()
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without a known bearer token with UNAUTHENTICATED (health/reflection stay open)."""

    def __init__(self, table: TokenTable, on_reject=None) -> None:
        self.table = table
        self._on_reject = on_reject or (lambda code: None)

    async def intercept_service(self, continuation, details):
        if not self.table.enabled or details.method.startswith(OPEN_METHODS):
            return await continuation(details)
        if self.table.valid(bearer(details.invocation_metadata)):
            return await continuation(details)
        self._on_reject("UNAUTHENTICATED")
        handler = await continuation(details)
        return _deny(handler)


async def _read_first(request_or_iterator) -> None:
    """Take the client's first message (waiting at most 1 s) before aborting a request stream:
    aborting while the client is still writing races in gRPC core, and the client then sees
    INTERNAL instead of UNAUTHENTICATED (see EdgeServicer.Stream)."""
    if not hasattr(request_or_iterator, "__aiter__"):
        return
    with contextlib.suppress(StopAsyncIteration, asyncio.TimeoutError):
        await asyncio.wait_for(request_or_iterator.__aiter__().__anext__(), 1.0)


def _deny(handler):
    async def abort(request_or_iterator, context):
        await _read_first(request_or_iterator)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

    async def abort_stream(request_or_iterator, context):
        await _read_first(request_or_iterator)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        yield  # pragma: no cover - makes this an async generator

    if handler is None:
        return None
    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kw)
    return grpc.unary_unary_rpc_method_handler(abort, **kw)
