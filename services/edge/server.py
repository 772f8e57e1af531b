"""`EdgeService` servicer: device streams in, detections and answers out.

One `Spotter` is shared by all sessions; each session owns a spotter `Stream`. Decoding runs in
a thread pool so the event loop keeps serving every other stream while onnxruntime works, and a
session's chunks are decoded in order (one read -> decode -> next read). Detections go back on
the RPC at once and, as `KeywordEvent`s, into the publish queue of the bus producer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from wakeline.v1 import bus_pb2, edge_pb2, edge_pb2_grpc

from services.edge.audio import AudioDecoder, AudioError
from services.edge.auth import TokenTable, bearer
from services.edge.batcher import DecodeBatcher
from services.edge.keywords import KeywordBook, KeywordError
from services.edge.metrics import EdgeMetrics
from services.edge.sessions import CLOSE, Session, SessionRegistry

log = logging.getLogger(__name__)


@dataclass
class ServiceLimits:
    """Per-node limits; see `EdgeSettings` for their meaning."""

    max_streams: int = 256
    max_chunk_bytes: int = 64 * 1024
    max_keywords: int = 32
    overload_lag_s: float = 2.0


class LagGauge:
    """Smoothed lag of device audio behind the wall clock, over all streams. Above the limit the
    node is behind real time, and taking more streams would only make every stream later: new
    streams are then refused."""

    def __init__(self, limit_s: float, alpha: float = 0.05, idle_s: float = 1.0) -> None:
        self.limit_s, self.alpha, self.idle_s = limit_s, alpha, idle_s
        self._value, self._t = 0.0, time.monotonic()

    def observe(self, lag_s: float, now: float | None = None) -> None:
        self._value = self.value_at(now) + self.alpha * (lag_s - self.value_at(now))
        self._t = time.monotonic() if now is None else now

    def value_at(self, now: float | None = None) -> float:
        """The smoothed lag, decaying once no chunk was decoded for `idle_s` (no work, no backlog)."""
        idle = (time.monotonic() if now is None else now) - self._t
        return self._value if idle <= self.idle_s else self._value * math.exp(-(idle - self.idle_s) / self.idle_s)

    @property
    def value(self) -> float:
        return self.value_at()

    @property
    def overloaded(self) -> bool:
        return self.limit_s > 0 and self.value > self.limit_s


class _Reject(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class EdgeServicer(edge_pb2_grpc.EdgeServiceServicer):
    """The service. `publish(KeywordEvent)` is a plain callable that must not block (a queue put).

    Args:
        spotter: an `edge.spotter.Spotter` (or anything with its API).
        node_id: this edge node's id (goes into events; answers come back on its reply stream).
        publish: hands one KeywordEvent to the bus producer.
        executor: threads that run the spotter.
    """

    def __init__(self, spotter, node_id: str, publish, executor: ThreadPoolExecutor, metrics: EdgeMetrics,
                 registry: SessionRegistry, limits: ServiceLimits, tokens: TokenTable | None = None) -> None:
        self.spotter = spotter
        self.node_id = node_id
        self.publish = publish
        self.executor = executor
        self.metrics = metrics
        self.registry = registry
        self.limits = limits
        self.tokens = tokens or TokenTable()
        self.book: KeywordBook | None = None
        self.batcher: DecodeBatcher | None = None
        self.model_rate = 16000
        self._active = 0
        self.lag = LagGauge(limits.overload_lag_s)
        metrics.realtime_lag.set_function(lambda: self.lag.value)
        if spotter is not None:
            self.set_spotter(spotter)

    def set_spotter(self, spotter) -> None:
        """Start serving with `spotter` (until then every RPC gets UNAVAILABLE)."""
        self.spotter = spotter
        cfg = getattr(spotter, "feature_cfg", None)
        self.model_rate = int(getattr(cfg, "sample_rate", None) or getattr(spotter, "sample_rate", 16000))
        # A spotter that resamples itself gets the device's rate, so serving matches its offline scoring.
        self.resample_here = not hasattr(spotter, "new_resampler")
        self.book = KeywordBook(spotter, self.limits.max_keywords)
        if hasattr(spotter, "decode_streams"):
            workers = getattr(self.executor, "_max_workers", 2)
            self.batcher = DecodeBatcher(spotter, self.executor, workers=workers)

    # ---- Stream ---------------------------------------------------------------------------

    async def Stream(self, request_iterator, context):
        it = request_iterator.__aiter__()
        # Read the config before any refusal: aborting a bidirectional stream that the client is
        # still writing races in gRPC core, and the client then sees INTERNAL ("Internal error from
        # Core") instead of the status we sent (seen about 1 run in 7 over TLS).
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            return
        if self.book is None:
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        if self._active >= self.limits.max_streams:
            await self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"edge node {self.node_id} is at its limit of {self.limits.max_streams} streams")
        if self.lag.overloaded:
            await self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"edge node {self.node_id} is behind real time ({self.lag.value:.1f} s); try another node")
        self._active += 1
        session = None
        reader = None
        try:
            try:
                session, decoder = await self._start(first, context)
            except _Reject as r:
                await self._abort(context, r.code, r.message)
            self.metrics.streams_open.inc()
            self.metrics.streams_total.inc()
            reader = asyncio.create_task(self._read(it, session, decoder))
            while True:
                item = await session.out.get()
                if isinstance(item, tuple) and item[0] is CLOSE:
                    _, code, message = item
                    if code is not None:
                        code = grpc.StatusCode[code] if isinstance(code, str) else code
                        await self._abort(context, code, message)
                    return
                yield item
        finally:
            self._active -= 1
            if reader is not None:
                reader.cancel()
            if session is not None:
                self.metrics.streams_open.dec()
                self.registry.close(session)
                log.info("stream closed", extra={"device_id": session.device_id, "session_id": session.session_id})

    async def _start(self, first: edge_pb2.StreamRequest, context) -> tuple[Session, AudioDecoder]:
        kind = first.WhichOneof("msg")
        if kind != "config":
            raise _Reject(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the first message of a stream must be a StreamConfig, got {kind or 'an empty message'}")
        cfg = first.config
        self._check_device(cfg.device_id, context)
        try:
            decoder = AudioDecoder(cfg.format, self.model_rate if self.resample_here else None,
                                   self.limits.max_chunk_bytes)
            specs = [(k.text, k.threshold if k.HasField("threshold") else None) for k in cfg.keywords]
            loop = asyncio.get_running_loop()
            enrolled, stream = await loop.run_in_executor(self.executor, self.book.create_stream, specs)
        except (AudioError, KeywordError) as e:
            raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
        session = self.registry.open(cfg.device_id)  # after validation: a bad config displaces nothing
        session.stream = stream
        session.keywords = {k.text: k for k in enrolled}
        session.attributes = dict(cfg.attributes)
        session.send(edge_pb2.StreamResponse(started=edge_pb2.StreamStarted(
            session_id=session.session_id, edge_node=self.node_id, keywords=enrolled,
            model_sample_rate=self.model_rate)))
        log.info("stream opened", extra={"device_id": cfg.device_id, "session_id": session.session_id,
                                         "keywords": len(enrolled), "rate": cfg.format.sample_rate})
        return session, decoder

    async def _read(self, it, session: Session, decoder: AudioDecoder) -> None:
        """Consume the device's messages until it half-closes; report the first error as a status."""
        loop = asyncio.get_running_loop()
        last_seq = None
        anchor = None  # wall time at which this device's audio clock read 0, while caught up
        last_dur = 0.0
        try:
            while True:
                t_wait = time.perf_counter()
                try:
                    req = await it.__anext__()
                except StopAsyncIteration:
                    break
                t_recv = time.perf_counter()
                kind = req.WhichOneof("msg")
                if kind == "audio":
                    seq = req.audio.seq
                    if seq:
                        if last_seq is not None and seq != last_seq + 1:
                            raise AudioError(f"audio seq {seq} after {last_seq}: chunks were lost or repeated")
                        last_seq = seq
                    if anchor is None or t_recv - t_wait > 0.5 * last_dur:
                        # We waited for this chunk about as long as the audio it follows lasts, so
                        # nothing is queued behind us (this also forgives pauses of devices that
                        # only send while someone speaks).
                        anchor = t_recv - decoder.seconds
                    before = decoder.seconds
                    samples = decoder.decode(req.audio.data)
                    last_dur = decoder.seconds - before
                    if samples.size:
                        await self._decode(session, loop, decoder, samples, t_recv)
                        # Chunks queued in gRPC's buffers while we decode show up here as audio
                        # falling behind the wall clock; the chunk latency cannot see them.
                        self.lag.observe(max(0.0, time.perf_counter() - anchor - decoder.seconds))
                elif kind == "update":
                    await self._update(session, req.update)
                elif kind == "config":
                    raise AudioError("StreamConfig may only be sent once, as the first message")
                else:
                    raise AudioError("empty StreamRequest: set config, audio or update")
            tail = decoder.flush()
            if tail.size:
                await self._decode(session, loop, decoder, tail, time.perf_counter())
            await self._decode(session, loop, decoder, None, time.perf_counter())
            session.close()
        except (AudioError, KeywordError) as e:
            self.metrics.rejected("INVALID_ARGUMENT")
            session.close("INVALID_ARGUMENT", str(e))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the session dies, the node does not
            log.exception("stream failed", extra={"device_id": session.device_id})
            session.close("INTERNAL", f"edge node error: {type(e).__name__}")

    async def _decode(self, session: Session, loop, decoder: AudioDecoder, samples, t_recv: float) -> None:
        async with session.lock:
            if self.batcher is not None:
                dets, compute_s = await self.batcher.submit(session.stream, decoder.out_rate, samples)
            else:
                dets, compute_s = await loop.run_in_executor(
                    self.executor, self.book.process, session.stream, decoder.out_rate, samples)
        if samples is not None:
            self.metrics.processed(samples.size / decoder.out_rate, compute_s)
            self.metrics.chunk_latency.observe(time.perf_counter() - t_recv)
        for det in dets:
            self._detected(session, det)

    def _detected(self, session: Session, det) -> None:
        event_id = uuid.uuid4().hex
        score, end, fired = float(det.score), float(det.end_time), float(det.fired_time)
        session.send(edge_pb2.StreamResponse(detection=edge_pb2.Detection(
            event_id=event_id, keyword=det.keyword, score=score, threshold=float(det.threshold),
            start_time=float(det.start_time), end_time=end, fired_time=fired,
            latency_ms=max(0.0, (fired - end) * 1000.0))))
        event = bus_pb2.KeywordEvent(
            event_id=event_id, trace_id=uuid.uuid4().hex, device_id=session.device_id, edge_node=self.node_id,
            keyword=det.keyword, score=score, start_time=float(det.start_time), end_time=end,
            fired_time=fired, created_unix_ms=int(time.time() * 1000), attributes=session.attributes)
        self.metrics.detections.inc()
        self.publish(event)
        log.info("detection", extra={"device_id": session.device_id, "keyword": det.keyword,
                                     "score": round(score, 3), "event_id": event_id})

    async def _update(self, session: Session, update: edge_pb2.KeywordUpdate) -> None:
        specs = [(k.text, k.threshold if k.HasField("threshold") else None) for k in update.add]
        await self._change(session, specs, list(update.remove))

    async def _change(self, session: Session, add: list, remove: list[str]) -> list:
        """Apply an enrollment change to a live session and tell the device; returns the added keywords."""
        loop = asyncio.get_running_loop()
        async with session.lock:
            added, session.keywords = await loop.run_in_executor(
                self.executor, self.book.change, session.stream, session.keywords, add, remove)
        session.send(edge_pb2.StreamResponse(keywords=edge_pb2.KeywordsChanged(
            keywords=list(session.keywords.values()))))
        return added

    # ---- enrollment RPCs --------------------------------------------------------------------

    async def Enroll(self, request, context):
        session = await self._session(request.device_id, context)
        specs = [(k.text, k.threshold if k.HasField("threshold") else None) for k in request.keywords]
        try:
            added = await self._change(session, specs, [])
        except KeywordError as e:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return edge_pb2.EnrollResponse(keywords=added)

    async def ListKeywords(self, request, context):
        session = await self._session(request.device_id, context)
        return edge_pb2.ListKeywordsResponse(keywords=list(session.keywords.values()))

    async def RemoveKeyword(self, request, context):
        session = await self._session(request.device_id, context)
        if request.text not in session.keywords:
            return edge_pb2.RemoveKeywordResponse(removed=False)
        await self._change(session, [], [request.text])
        return edge_pb2.RemoveKeywordResponse(removed=True)

    async def _session(self, device_id: str, context) -> Session:
        if self.book is None:
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        try:
            self._check_device(device_id, context)
        except _Reject as r:
            await self._abort(context, r.code, r.message)
        session = self.registry.get(device_id)
        if session is None or session.stream is None:
            await self._abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                              f"device {device_id!r} has no open stream on edge node {self.node_id}")
        return session

    def _check_device(self, device_id: str, context) -> None:
        if not device_id:
            raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, "device_id must not be empty")
        if not self.tokens.allows(bearer(context.invocation_metadata()), device_id):
            raise _Reject(grpc.StatusCode.PERMISSION_DENIED, f"this token may not act for device {device_id!r}")

    async def _abort(self, context, code: grpc.StatusCode, message: str):
        self.metrics.rejected(code.name)
        await context.abort(code, message)
