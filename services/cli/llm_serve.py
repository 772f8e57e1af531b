"""`wakeline llm serve | generate | info`: the LLM gRPC service and a small client of it."""

from __future__ import annotations

import sys


def _settings(args):
    from services.llm.settings import LlmSettings

    over = {k: v for k, v in {
        "model": args.model, "port": args.port, "host": args.host, "device": args.device, "tp": args.tp,
        "dtype": args.dtype, "metrics_port": args.metrics_port, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
        "auth_tokens_file": args.auth_tokens_file, "tp_calibration": args.tp_calibration,
    }.items() if v is not None}
    return LlmSettings(**over)


def _serve(args) -> int:
    import asyncio
    import os

    from services.llm.server import serve
    from services.llm.tp import torchrun_argv, under_torchrun

    try:
        settings = _settings(args)
        if settings.tp > 1 and not under_torchrun():
            argv = torchrun_argv(settings.tp, sys.argv[1:])
            os.execv(argv[0], argv)  # one process per rank; rank 0 serves
        asyncio.run(serve(settings))
    except (NotImplementedError, FileNotFoundError, ValueError) as e:
        print(f"wakeline llm serve: {e}", file=sys.stderr)
        return 2
    return 0


async def _generate_async(args) -> int:
    import json
    import time

    from services.llm.client import LlmClient, build_request

    msgs = None
    if args.chat:
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}]
    req = build_request(None if msgs else args.prompt, msgs, max_tokens=args.max_tokens,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, stop=args.stop,
                        seed=args.seed)
    async with LlmClient(args.target, token=args.token, tls_ca=args.tls_ca) as c:
        t0 = time.perf_counter()
        if args.no_stream:
            r = await c.generate(req, timeout=args.timeout)
            print(r.text)
            last = r
        else:
            last = None
            async for m in c.generate_stream(req, timeout=args.timeout):
                print(m.text, end="", flush=True)
                last = m
            print()
        if args.stats and last is not None:
            print(json.dumps({"finish_reason": last.finish_reason, "prompt_tokens": last.usage.prompt_tokens,
                              "completion_tokens": last.usage.completion_tokens,
                              "ttft_ms": round(last.timing.ttft_ms, 1),
                              "total_ms": round((time.perf_counter() - t0) * 1e3, 1)}), file=sys.stderr)
    return 0


def _generate(args) -> int:
    import asyncio

    import grpc

    try:
        return asyncio.run(_generate_async(args))
    except grpc.aio.AioRpcError as e:
        print(f"wakeline llm generate: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1


def _info(args) -> int:
    import asyncio

    from services.llm.client import LlmClient

    async def run():
        async with LlmClient(args.target, token=args.token, tls_ca=args.tls_ca) as c:
            print(await c.model_info(), end="")

    asyncio.run(run())
    return 0


def _client_flags(p) -> None:
    p.add_argument("--target", default="127.0.0.1:50061", help="host:port of the LLM service")
    p.add_argument("--token", default=None, help="bearer token")
    p.add_argument("--tls-ca", default=None, help="PEM to verify the server's TLS certificate")


def register(grp) -> None:
    from services.cli.common import add_command

    p = add_command(grp, "serve", "Serve wakeline.v1.LlmService over gRPC (env WAKELINE_LLM_*)", _serve)
    p.add_argument("--model", default=None, help="Hugging Face model folder (default models/llm/dense)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="gRPC port (default 50061)")
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--dtype", default=None, help="bfloat16, float16 or float32 (default: engine's choice)")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel degree: N ranks via torchrun, rank 0 serves")
    p.add_argument("--tp-calibration", default=None, help="quantized all-reduce calibration (wakeline llm calibrate)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (0 = off)")
    p.add_argument("--tls-cert", default=None)
    p.add_argument("--tls-key", default=None)
    p.add_argument("--auth-tokens-file", default=None, help="file with one accepted bearer token per line")

    p = add_command(grp, "generate", "Generate text with a running LLM service (streams by default)", _generate)
    p.add_argument("prompt")
    _client_flags(p)
    p.add_argument("--chat", action="store_true", help="send the prompt as a user chat message")
    p.add_argument("--system", default=None, help="system prompt (with --chat)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    p.add_argument("--no-stream", action="store_true", help="use unary Generate")
    p.add_argument("--stats", action="store_true", help="print usage and timing as JSON on stderr")

    p = add_command(grp, "info", "Show the model served by a running LLM service", _info)
    _client_flags(p)
