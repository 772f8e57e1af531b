"""One edge node: the gRPC server, health and reflection, metrics, the bus, and the drain on SIGTERM.

Start-up order matters for orchestrators: the port opens first with health NOT_SERVING, the
model loads, and only then does health turn SERVING. Stop: health NOT_SERVING, no new RPCs, open
streams get `grace_s` to finish, then the event publisher is flushed (or left in the spool) and
the bus is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from wakeline.v1 import edge_pb2, edge_pb2_grpc

from services.edge.auth import AuthInterceptor, TokenTable
from services.edge.metrics import EdgeMetrics
from services.edge.server import EdgeServicer, ServiceLimits
from services.edge.sessions import SessionRegistry
from services.edge.settings import EdgeSettings

log = logging.getLogger(__name__)

SERVICE = edge_pb2.DESCRIPTOR.services_by_name["EdgeService"].full_name


def load_spotter(model_dir, num_threads: int, threshold_mode: str = "auto"):
    """Load the Spotter of `model_dir` (edge.spotter, numpy + onnxruntime)."""
    from edge.spotter import Spotter

    return Spotter.from_dir(str(model_dir), num_threads=num_threads, threshold_mode=threshold_mode)


def warm_up(spotter) -> None:
    """Load the phonemizer and run the encoder once, so the first device does not pay for it."""
    import numpy as np

    try:
        stream = spotter.create_stream(["hello there"])
        stream.accept_waveform(16000, np.zeros(16000, np.float32))
        while spotter.is_ready(stream):
            spotter.decode(stream)
    except (ValueError, AttributeError) as e:
        log.warning("spotter warm-up failed", extra={"error": str(e)})


def bus_config(s: EdgeSettings):
    """The bus configuration: WAKELINE_BUS_* settings, overridden by the edge's own bus fields."""
    import dataclasses

    from services.settings import BusSettings

    cfg = BusSettings().to_config()
    over = {"spool_dir": str(s.spool_dir)}
    if s.bus_url is not None:
        over["url"] = s.bus_url
    if s.bus_namespace is not None:
        over["namespace"] = s.bus_namespace
    if s.bus_data_dir is not None:
        over["data_dir"] = str(s.bus_data_dir)
    return dataclasses.replace(cfg, **over)


class EventPublisher:
    """Fire-and-forget publishing of KeywordEvents through the bus's spooling EventProducer."""

    def __init__(self, producer, metrics: EdgeMetrics) -> None:
        self.producer = producer
        self.metrics = metrics
        self._inflight: set[asyncio.Task] = set()

    def __call__(self, event) -> None:
        # EventProducer queues (or spools) synchronously on call, so task order is publish order.
        task = asyncio.get_running_loop().create_task(self.producer.publish_event(event))
        self._inflight.add(task)
        task.add_done_callback(self._done)
        self.refresh()

    def _done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event publish failed", extra={"error": repr(task.exception())})
        else:
            self.metrics.events_published.inc()
        self.refresh()

    def refresh(self) -> None:
        self.metrics.spool_depth.set(len(self._inflight) + getattr(self.producer, "spooled", 0))


class EdgeNode:
    """An edge node built from `EdgeSettings`; `spotter` and `bus` may be injected (tests)."""

    def __init__(self, settings: EdgeSettings, spotter=None, bus=None) -> None:
        self.settings = settings
        self.metrics = EdgeMetrics(settings.node_id)
        self.registry = SessionRegistry(settings.answer_ttl_s, settings.answer_max_pending, self.metrics.answer)
        self.tokens = TokenTable.load(settings.auth_tokens_file, settings.auth_tokens)
        self.executor = ThreadPoolExecutor(settings.num_threads, thread_name_prefix="spotter")
        self.spotter = spotter
        self.bus = bus
        self._own_bus = bus is None
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.servicer: EdgeServicer | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            res = self.health.set(name, status)
            if asyncio.iscoroutine(res):
                await res

    async def start(self) -> int:
        """Open the port (NOT_SERVING), load the model and connect the bus, then SERVING. Returns the port."""
        s = self.settings
        options = [("grpc.max_receive_message_length", s.max_message_bytes),
                   ("grpc.max_send_message_length", s.max_message_bytes),
                   ("grpc.so_reuseport", 1 if s.reuse_port else 0),
                   ("grpc.keepalive_time_ms", 30_000),
                   ("grpc.http2.min_ping_interval_without_data_ms", 10_000)]
        interceptors = [AuthInterceptor(self.tokens, self.metrics.rejected)] if self.tokens.enabled else []
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        await self._set_health(False)
        self.servicer = EdgeServicer(None, s.node_id, self._publish_late, self.executor, self.metrics,
                                     self.registry, ServiceLimits(s.max_streams, s.max_chunk_bytes, s.max_keywords,
                                                   s.overload_lag_s),
                                     self.tokens)
        edge_pb2_grpc.add_EdgeServiceServicer_to_server(self.servicer, self.server)
        addr = f"{s.host}:{s.port}"
        if s.tls_cert is not None:
            creds = grpc.ssl_server_credentials([(s.tls_key.read_bytes(), s.tls_cert.read_bytes())])
            self.port = self.server.add_secure_port(addr, creds)
        else:
            self.port = self.server.add_insecure_port(addr)
        if not self.port:
            raise RuntimeError(f"cannot bind {addr}")
        await self.server.start()
        if s.metrics_port is not None:
            self.metrics_port = self.metrics.serve(s.metrics_port, s.host)
        log.info("edge node listening", extra={"node": s.node_id, "port": self.port, "tls": s.tls_cert is not None,
                                               "auth": self.tokens.enabled, "metrics_port": self.metrics_port})
        if self.spotter is None:
            loop = asyncio.get_running_loop()
            self.spotter = await loop.run_in_executor(self.executor, load_spotter, s.model_dir, s.ort_threads,
                                                      s.threshold_mode)
            await loop.run_in_executor(self.executor, warm_up, self.spotter)
        await self._connect_bus()
        self.servicer.set_spotter(self.spotter)
        self._tasks.append(asyncio.create_task(self._expire_loop(), name="answer-expiry"))
        await self._set_health(True)
        log.info("edge node serving", extra={"node": s.node_id, "model_dir": str(s.model_dir)})
        return self.port

    async def _connect_bus(self) -> None:
        try:
            from services.bus import EventProducer, ReplyConsumer, open_bus
        except ImportError:  # the package root re-exports these once the bus lands in full
            from services.bus.consumer import ReplyConsumer
            from services.bus.core import open_bus
            from services.bus.producer import EventProducer

        s = self.settings
        if self.bus is None:
            self.bus = await open_bus(bus_config(s))
        self.producer = EventProducer(self.bus, s.spool_dir)
        self.publisher = EventPublisher(self.producer, self.metrics)
        self.replies = ReplyConsumer(self.bus, s.node_id)
        self._tasks.append(asyncio.create_task(self.replies.run(self._on_answer), name="reply-consumer"))

    def _publish_late(self, event) -> None:
        self.publisher(event)

    async def _on_answer(self, answer) -> None:
        outcome = self.registry.route_answer(answer)
        log.info("answer", extra={"device_id": answer.device_id, "event_id": answer.event_id, "outcome": outcome})

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.settings.answer_ttl_s / 4))
            self.registry.expire()
            self.publisher.refresh()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new RPCs, give open streams `grace` seconds, close the bus."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.grace_s if grace is None else grace
        log.info("edge node draining", extra={"grace_s": grace, "streams": len(self.registry)})
        await self._set_health(False)
        if self.server is not None:
            await self.server.stop(grace)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if getattr(self, "producer", None) is not None:
            await self.producer.close(timeout=max(1.0, grace))
        if self.bus is not None and self._own_bus:
            await self.bus.close()
        self.metrics.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("edge node stopped")

    async def run(self) -> None:
        """Start, then serve until SIGTERM/SIGINT, then drain."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
        except Exception:
            await self.stop(0)  # close the port and the bus before the error propagates
            raise
        await stop.wait()
        await self.stop()
