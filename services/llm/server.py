"""The `wakeline.v1.LlmService` gRPC server (grpc.aio) around an `EngineRunner`.

Status codes: a full queue -> RESOURCE_EXHAUSTED at once; a prompt longer than the context ->
INVALID_ARGUMENT with the numbers; a request past its deadline -> DEADLINE_EXCEEDED and its
work is aborted; a client that cancels or disconnects aborts its request (KV cache freed before
the next engine step). Health reports SERVING only once the model is loaded and warmed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from wakeline.v1 import bus_pb2, llm_pb2, llm_pb2_grpc

from llm.sampling import SamplingParams
from services.llm.auth import BearerAuthInterceptor
from services.llm.runner import AdmissionError, EngineRunner, PromptTooLong
from services.llm.settings import LlmSettings

log = logging.getLogger("wakeline.llm.server")
SERVICE = llm_pb2.DESCRIPTOR.services_by_name["LlmService"].full_name
# Leave the client this much of its deadline to receive our DEADLINE_EXCEEDED before its own fires.
_DEADLINE_MARGIN_S = 0.02


def sampling_from_proto(p: llm_pb2.SamplingParams, default_max_tokens: int) -> SamplingParams:
    """wakeline.v1.SamplingParams -> llm SamplingParams; 0 on the wire means off, or for max_tokens
    `default_max_tokens` (the runner then caps it); raises ValueError on out-of-range values."""
    return SamplingParams(temperature=max(0.0, p.temperature), top_k=max(0, p.top_k), top_p=p.top_p or 1.0,
                          repetition_penalty=p.repetition_penalty or 1.0,
                          max_tokens=p.max_tokens if p.max_tokens > 0 else default_max_tokens,
                          stop=list(p.stop), seed=p.seed if p.HasField("seed") else None)


def model_info(engine, model_dir: Path, device: str, tp: int) -> llm_pb2.ModelInfoResponse:
    """ModelInfo from the checkpoint's config.json and the loaded engine."""
    cfg = {}
    with contextlib.suppress(OSError, ValueError):
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    model = getattr(engine, "model", None)
    n_params, dtype = 0, ""
    if model is not None and hasattr(model, "parameters"):
        params = list(model.parameters())
        n_params = sum(p.numel() for p in params) * max(tp, 1)
        dtype = str(params[0].dtype).replace("torch.", "") if params else ""
    arch = (cfg.get("architectures") or [cfg.get("model_type", "")])[0]
    moe = any(k in cfg for k in ("num_local_experts", "num_experts", "n_routed_experts"))
    return llm_pb2.ModelInfoResponse(
        model_name=Path(model_dir).name, architecture=arch, context_length=int(engine.max_context),
        num_parameters=n_params, dtype=dtype or str(cfg.get("torch_dtype", "")), tp_size=tp,
        vocab_size=int(cfg.get("vocab_size", 0)), moe=moe, device=device)


class LlmServicer(llm_pb2_grpc.LlmServiceServicer):
    """Generate / GenerateStream / Abort / ModelInfo over one `EngineRunner`."""

    def __init__(self, runner: EngineRunner | None = None, info: llm_pb2.ModelInfoResponse | None = None) -> None:
        self.runner = runner  # None while the model loads: calls get UNAVAILABLE
        self.info = info

    async def _ready(self, context) -> None:
        if self.runner is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading")

    async def _submit(self, request: llm_pb2.GenerateRequest, context):
        await self._ready(context)
        which = request.WhichOneof("input")
        try:
            if which == "chat":
                msgs = [{"role": m.role, "content": m.content} for m in request.chat.messages]
                if not msgs:
                    raise ValueError("chat has no messages")
                ids = self.runner.encode_chat(msgs)
            elif which == "prompt" and request.prompt:
                ids = self.runner.encode(request.prompt)
            else:
                raise ValueError("empty request: set `prompt` or `chat`")
            sampling = sampling_from_proto(request.sampling, self.runner.default_max_tokens)
            return self.runner.submit(ids, sampling, request.request_id or None)
        except AdmissionError as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except PromptTooLong as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except RuntimeError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))

    @staticmethod
    def _remaining(context) -> float | None:
        t = context.time_remaining()
        return None if t is None else max(0.0, t - _DEADLINE_MARGIN_S)

    def _usage_timing(self, st):
        q, ttft, total = st.timing_ms()
        usage = bus_pb2.Usage(prompt_tokens=st.prompt_tokens, completion_tokens=st.completion_tokens,
                              prefill_tokens_computed=st.prompt_tokens)
        return usage, llm_pb2.Timing(queue_ms=q, ttft_ms=ttft, total_ms=total)

    async def _deadline(self, st, context) -> None:
        self.runner.abort(st.request_id, reason="deadline")
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"deadline exceeded after {st.completion_tokens} tokens; request aborted")

    async def Generate(self, request, context):
        st = await self._submit(request, context)
        ids: list[int] = []
        reason = ""

        async def collect() -> None:
            nonlocal reason
            async for d in self.runner.stream(st):
                ids.extend(d.token_ids)
                if d.finished:
                    reason = d.finish_reason

        try:
            await asyncio.wait_for(collect(), self._remaining(context))
        except asyncio.TimeoutError:
            await self._deadline(st, context)
        finally:
            if not st.finished:  # cancelled by the client: free the work now
                self.runner.abort(st.request_id)
        if reason.startswith("error"):
            await context.abort(grpc.StatusCode.INTERNAL, reason)
        usage, timing = self._usage_timing(st)
        return llm_pb2.GenerateResponse(request_id=st.request_id, text=st.detok.text, token_ids=ids,
                                        finish_reason=reason, usage=usage, timing=timing)

    async def GenerateStream(self, request, context):
        st = await self._submit(request, context)
        deadline = self._remaining(context)
        end = None if deadline is None else time.monotonic() + deadline
        it = self.runner.stream(st).__aiter__()
        try:
            while True:
                try:
                    left = None if end is None else max(0.0, end - time.monotonic())
                    d = await asyncio.wait_for(it.__anext__(), left)
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    await self._deadline(st, context)
                    return
                if d.finish_reason.startswith("error"):
                    await context.abort(grpc.StatusCode.INTERNAL, d.finish_reason)
                msg = llm_pb2.GenerateStreamResponse(request_id=st.request_id, text=d.text, token_ids=d.token_ids,
                                                     finished=d.finished, finish_reason=d.finish_reason)
                if d.finished:
                    usage, timing = self._usage_timing(st)
                    msg.usage.CopyFrom(usage)
                    msg.timing.CopyFrom(timing)
                yield msg
                if d.finished:
                    return
        finally:
            await it.aclose()
            if not st.finished:
                self.runner.abort(st.request_id)

    async def Abort(self, request, context):
        await self._ready(context)
        return llm_pb2.AbortResponse(found=self.runner.abort(request.request_id))

    async def ModelInfo(self, request, context):
        await self._ready(context)
        return self.info


def load_engine(settings: LlmSettings):
    """Load the engine named by the settings (the engine's optional knobs only when it has them)."""
    import inspect

    from llm.engine import Engine

    if not (Path(settings.model) / "config.json").is_file():
        raise FileNotFoundError(f"no model at {settings.model} (expected a Hugging Face folder with config.json)")
    kwargs = {}
    accepted = set(inspect.signature(Engine.from_pretrained).parameters) | set(inspect.signature(Engine).parameters)
    for k in ("max_batch_size", "max_prefill_tokens_per_step", "prefill_graphs", "decode_steps", "compile",
              "cute_prefill"):
        v = getattr(settings, k)
        if v is not None and k in accepted and (k not in ("compile", "cute_prefill") or v):
            kwargs[k] = v
    if "detokenize" in accepted:  # the runner detokenizes and applies stop strings itself
        kwargs["detokenize"] = False
    if settings.tp > 1:
        from services.llm.tp import load_tp_engine

        return load_tp_engine(settings, Engine, kwargs)
    return Engine.from_pretrained(str(settings.model), device=settings.device, dtype=settings.dtype, **kwargs)


async def warm_up(runner: EngineRunner) -> None:
    """One short generation through the whole path, so the first real request pays no start-up cost."""
    ids = runner.encode("Hello")
    await runner.generate(ids or [0], SamplingParams(max_tokens=4))


class LlmServer:
    """A started LlmService: `await start()`, `port`, `await stop(grace)`; health flips to SERVING after warm-up."""

    def __init__(self, settings: LlmSettings, engine=None) -> None:
        self.settings = settings
        self.engine = engine
        self.runner: EngineRunner | None = None
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.servicer = LlmServicer()
        self.port = 0

    async def start(self) -> int:
        s = self.settings
        opts = [("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0)]  # a second server on this port is an error, not a silent load-balance
        tokens = s.tokens()
        interceptors = [BearerAuthInterceptor(tokens)] if tokens else []
        self.server = grpc.aio.server(interceptors=interceptors, options=opts)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        llm_pb2_grpc.add_LlmServiceServicer_to_server(self.servicer, self.server)
        reflection.enable_server_reflection(
            (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        addr = f"{s.host}:{s.port}"
        if s.tls_cert and s.tls_key:
            creds = grpc.ssl_server_credentials([(Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())])
            self.port = self.server.add_secure_port(addr, creds)
        else:
            self.port = self.server.add_insecure_port(addr)
        if not self.port:
            raise RuntimeError(f"cannot bind {addr}")
        await self.server.start()  # answers health (NOT_SERVING) while the model loads
        if self.engine is None:
            self.engine = await asyncio.to_thread(load_engine, s)
        self.runner = EngineRunner(self.engine, max_pending_requests=s.max_pending_requests,
                                   max_pending_tokens=s.max_pending_tokens,
                                   default_max_tokens=s.default_max_tokens, max_tokens_limit=s.max_tokens_limit,
                                   on_fatal=self._fatal)
        self.runner.start()
        if s.warmup:
            await warm_up(self.runner)
        self.servicer.info = model_info(self.engine, s.model, s.device, s.tp)
        self.servicer.runner = self.runner
        if s.metrics_port:
            self.runner.metrics.serve(s.metrics_port, addr=s.host)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        log.info("llm service serving", extra={"addr": f"{s.host}:{self.port}", "model": str(s.model)})
        return self.port

    def _fatal(self, exc: BaseException) -> None:
        log.error("engine failed; health NOT_SERVING", extra={"error": repr(exc)})
        for name in ("", SERVICE):
            asyncio.ensure_future(self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING))

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let running requests finish for `grace` seconds, then stop the engine."""
        await self.health.enter_graceful_shutdown()
        if self.server:
            await self.server.stop(self.settings.grace_s if grace is None else grace)
        if self.runner:
            await self.runner.stop()
        if getattr(self.engine, "tp_model", None) is not None:
            from services.llm.tp import release_followers

            await asyncio.to_thread(release_followers, self.engine)


async def serve(settings: LlmSettings) -> None:
    """Run until SIGTERM/SIGINT, then drain (the `wakeline llm serve` entry point)."""
    import signal

    if settings.tp > 1:
        from services.llm.tp import is_follower, run_follower

        if is_follower():  # ranks > 0 serve nothing: they repeat rank 0's model calls (main thread: signals)
            run_follower(settings)
            return
    srv = LlmServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    start = asyncio.ensure_future(srv.start())
    done, _ = await asyncio.wait({start, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if start in done:
        start.result()  # raise start-up errors
        print(f"llm service listening on {settings.host}:{srv.port}", flush=True)
        await stop.wait()
    else:
        start.cancel()
    log.info("llm service draining")
    await srv.stop()
