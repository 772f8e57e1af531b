"""The keyword-event worker: KeywordEvent (bus) -> prompt -> LLM -> Answer (bus), exactly once as seen outside.

The handler returns the Answer instead of publishing it: the bus's EventConsumer then publishes
it to the owning edge node's reply stream, adds the event id to the group's done-set and acks,
in one Lua script. A worker killed between generating and that script leaves the event pending;
another worker claims it after the visibility timeout and generates again, but the done-set
check inside the same script drops any second publication. The answer id is derived from the
event id, so even an edge node that saw a duplicate could drop it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc
from wakeline.v1 import bus_pb2

from llm.sampling import SamplingParams
from services.llm.runner import AdmissionError, EngineRunner, PromptTooLong
from services.worker.prompts import PromptBook
from services.worker.settings import WorkerSettings

log = logging.getLogger("wakeline.worker")

# gRPC codes after which retrying the same event cannot help: answer with the error instead.
_PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
              grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED}


class PermanentError(Exception):
    """The event can never be answered (e.g. the prompt is too long): reply with the error text."""


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float


class LocalBackend:
    """Generates with an engine in this process through the same continuous-batching runner as the service."""

    def __init__(self, runner: EngineRunner) -> None:
        self.runner = runner

    @classmethod
    async def open(cls, s: WorkerSettings) -> LocalBackend:
        from services.llm.server import LlmSettings, load_engine, warm_up

        engine = await asyncio.to_thread(load_engine, LlmSettings(model=s.model, device=s.device, dtype=s.dtype))
        runner = EngineRunner(engine, max_pending_requests=max(64, s.concurrency * 2))
        runner.start()
        await warm_up(runner)
        return cls(runner)

    async def complete(self, messages: list[dict], sampling: SamplingParams, timeout: float) -> Reply:
        try:
            ids = self.runner.encode_chat(messages)
            st = self.runner.submit(ids, sampling)
        except PromptTooLong as e:
            raise PermanentError(str(e)) from e
        except AdmissionError:
            raise

        async def drain() -> None:
            async for _ in self.runner.stream(st):
                pass

        try:
            await asyncio.wait_for(drain(), timeout)
        finally:
            if not st.finished:
                self.runner.abort(st.request_id)
        if st.finish_reason.startswith("error"):
            raise RuntimeError(st.finish_reason)
        _, ttft, _ = st.timing_ms()
        return Reply(st.detok.text.strip(), st.prompt_tokens, st.completion_tokens, ttft)

    async def close(self) -> None:
        await self.runner.stop()


class GrpcBackend:
    """Generates through the LLM gRPC service (GenerateStream, so TTFT is measured at the worker)."""

    def __init__(self, s: WorkerSettings) -> None:
        from services.llm.client import LlmClient

        self.client = LlmClient(s.llm_target, token=s.llm_token, tls_ca=s.llm_tls_ca)

    @classmethod
    async def open(cls, s: WorkerSettings) -> GrpcBackend:
        b = cls(s)
        await b.client.wait_ready(timeout=600)
        return b

    async def complete(self, messages: list[dict], sampling: SamplingParams, timeout: float) -> Reply:
        from services.llm.client import build_request

        req = build_request(messages=messages, max_tokens=sampling.max_tokens, temperature=sampling.temperature)
        t0 = time.perf_counter()
        ttft = 0.0
        parts: list[str] = []
        last = None
        try:
            async for m in self.client.generate_stream(req, timeout=timeout):
                if not ttft and m.token_ids:
                    ttft = (time.perf_counter() - t0) * 1e3
                parts.append(m.text)
                last = m
        except grpc.aio.AioRpcError as e:
            if e.code() in _PERMANENT:
                raise PermanentError(f"{e.code().name}: {e.details()}") from e
            raise
        usage = last.usage if last is not None else bus_pb2.Usage()
        return Reply("".join(parts).strip(), usage.prompt_tokens, usage.completion_tokens, ttft)

    async def close(self) -> None:
        await self.client.close()


def answer_id(event_id: str) -> str:
    """The Answer's id: a function of the event id, so every redelivery produces the same one."""
    return f"ans-{event_id}"


class KeywordWorker:
    """Turns KeywordEvents into Answers with a backend; `handle` is the bus consumer's handler."""

    def __init__(self, backend, prompts: PromptBook, *, max_tokens: int = 64, temperature: float = 0.0,
                 request_timeout_s: float = 60.0) -> None:
        self.backend = backend
        self.prompts = prompts
        self.max_tokens, self.temperature = max_tokens, temperature
        self.request_timeout_s = request_timeout_s
        self.answered = 0

    async def handle(self, event: bus_pb2.KeywordEvent) -> bus_pb2.Answer:
        """Answer one event (raises on transient failures so that the bus redelivers it)."""
        if not event.edge_node:
            raise PermanentError(f"event {event.event_id} has no edge_node to answer to")
        messages, tpl = self.prompts.render(event)
        sampling = SamplingParams(max_tokens=tpl.max_tokens or self.prompts.max_tokens or self.max_tokens,
                                  temperature=self.temperature if tpl.temperature is None else tpl.temperature)
        ans = bus_pb2.Answer(answer_id=answer_id(event.event_id), event_id=event.event_id,
                             trace_id=event.trace_id, device_id=event.device_id, edge_node=event.edge_node,
                             keyword=event.keyword)
        try:
            r = await self.backend.complete(messages, sampling, self.request_timeout_s)
            ans.text, ans.ttft_ms = r.text, r.ttft_ms
            ans.usage.prompt_tokens, ans.usage.completion_tokens = r.prompt_tokens, r.completion_tokens
            ans.usage.prefill_tokens_computed = r.prompt_tokens
        except PermanentError as e:
            log.warning("event cannot be answered", extra={"event_id": event.event_id, "error": str(e)})
            ans.error = str(e)
        ans.created_unix_ms = int(time.time() * 1000)
        self.answered += 1
        log.info("answered", extra={"event_id": event.event_id, "keyword": event.keyword,
                                    "device_id": event.device_id, "ttft_ms": round(ans.ttft_ms, 1)})
        return ans


async def open_backend(s: WorkerSettings):
    """The backend named by the settings: `local` (engine in process) or `grpc` (the LLM service)."""
    return await (LocalBackend.open(s) if s.backend == "local" else GrpcBackend.open(s))


async def run_worker(s: WorkerSettings, stop: asyncio.Event | None = None, ready=None) -> None:
    """Consume events until `stop` is set: the `wakeline worker run` entry point."""
    from services.bus import BusConfig, EventConsumer, open_bus

    prompts = PromptBook.load(s.templates)
    backend = await open_backend(s)
    bus = await open_bus(BusConfig(url=s.bus_url, namespace=s.bus_namespace, data_dir=str(s.bus_data_dir),
                                   visibility_timeout_s=s.visibility_timeout_s, max_deliveries=s.max_deliveries))
    worker = KeywordWorker(backend, prompts, max_tokens=s.max_tokens, temperature=s.temperature,
                           request_timeout_s=s.request_timeout_s)
    consumer = EventConsumer(bus, s.group, s.consumer, concurrency=s.concurrency)
    task = asyncio.create_task(consumer.run(worker.handle))
    health_srv = await _health_server(s) if s.health_port else None
    if s.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(s.metrics_port, addr=s.health_host)  # the bus consumer's counters
    log.info("worker running", extra={"group": s.group, "consumer": s.consumer, "backend": s.backend})
    if ready is not None:
        ready()
    try:
        waiters = {task} | ({asyncio.ensure_future(stop.wait())} if stop else set())
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        consumer.stop()
        await asyncio.wait_for(task, timeout=s.request_timeout_s)
    finally:
        if health_srv is not None:
            await health_srv.stop(0)
        if not task.done():
            task.cancel()
        await backend.close()
        await bus.close()


async def _health_server(s: WorkerSettings):
    """A gRPC server with only the standard health service, SERVING while the worker consumes (probes)."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    srv = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, srv)
    if not srv.add_insecure_port(f"{s.health_host}:{s.health_port}"):
        raise RuntimeError(f"cannot bind the health port {s.health_host}:{s.health_port}")
    await srv.start()
    await hs.set("", health_pb2.HealthCheckResponse.SERVING)
    return srv
