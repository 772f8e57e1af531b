"""Bearer-token auth for grpc.aio servers: `authorization: Bearer <token>` metadata or UNAUTHENTICATED.

Health and reflection stay open so that orchestrators (docker healthchecks, k8s probes) can
probe a server without its secret.
"""

from __future__ import annotations

import hmac

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _deny(message: str):
    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    return unary, stream


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Admit calls whose bearer token is one of `tokens` (compared in constant time)."""

    def __init__(self, tokens: set[str]) -> None:
        if not tokens:
            raise ValueError("BearerAuthInterceptor needs at least one token")
        self._tokens = [t.encode() for t in tokens]

    def _ok(self, metadata) -> bool:
        for key, value in metadata or ():
            if key.lower() == "authorization":
                v = value.decode() if isinstance(value, bytes) else value
                if v.lower().startswith("bearer "):
                    got = v[7:].strip().encode()
                    return any(hmac.compare_digest(got, t) for t in self._tokens)
        return False

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES) or self._ok(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        unary, stream = _deny("missing or invalid bearer token")
        if handler.response_streaming:
            if handler.request_streaming:
                return grpc.stream_stream_rpc_method_handler(stream)
            return grpc.unary_stream_rpc_method_handler(stream)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(unary)
        return grpc.unary_unary_rpc_method_handler(unary)
