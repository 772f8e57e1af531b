"""Prometheus metrics of one edge node, on their own registry so several nodes fit in one process."""

from __future__ import annotations

import collections
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class EdgeMetrics:
    """The node's counters; `serve(port)` exposes them on http://HOST:PORT/metrics."""

    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        labels = {"node": node_id}
        self.streams_open = Gauge("wakeline_edge_streams_open", "Open device streams", ["node"], registry=r).labels(**labels)
        self.streams_total = Counter("wakeline_edge_streams", "Device streams accepted", ["node"], registry=r).labels(**labels)
        self.audio_seconds = Counter(
            "wakeline_edge_audio_seconds", "Seconds of device audio processed", ["node"], registry=r
        ).labels(**labels)
        self.compute_seconds = Counter(
            "wakeline_edge_compute_seconds", "Thread time spent in the spotter", ["node"], registry=r
        ).labels(**labels)
        self.rtf = Gauge(
            "wakeline_edge_real_time_factor",
            "Spotter compute seconds per audio second over the last 10 s window (per core)",
            ["node"], registry=r,
        ).labels(**labels)
        self.chunk_latency = Histogram(
            "wakeline_edge_chunk_latency_seconds", "Chunk received -> decoded, including queueing",
            ["node"], registry=r, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        ).labels(**labels)
        self.realtime_lag = Gauge(
            "wakeline_edge_realtime_lag_seconds",
            "Smoothed lag of decoded device audio behind the wall clock (new streams refused above the limit)",
            ["node"], registry=r,
        ).labels(**labels)
        self.detections = Counter("wakeline_edge_detections", "Keyword detections", ["node"], registry=r).labels(**labels)
        self.events_published = Counter(
            "wakeline_edge_events_published", "KeywordEvents handed to the bus producer", ["node"], registry=r
        ).labels(**labels)
        self.spool_depth = Gauge(
            "wakeline_edge_spool_depth", "KeywordEvents waiting in the on-disk spool or the publish queue", ["node"],
            registry=r,
        ).labels(**labels)
        self._answers = Counter("wakeline_edge_answers", "Answers from the reply stream by outcome", ["node", "outcome"],
                                registry=r)
        self._rejected = Counter("wakeline_edge_rejected", "RPCs ended with an error status", ["node", "code"], registry=r)
        self._node = node_id
        r.register(_ProcessWide())
        self._window: collections.deque[tuple[float, float, float]] = collections.deque()  # (t, audio s, cpu s)
        self._sum_audio = self._sum_compute = 0.0

    def answer(self, outcome: str) -> None:
        self._answers.labels(node=self._node, outcome=outcome).inc()

    def rejected(self, code: str) -> None:
        self._rejected.labels(node=self._node, code=code).inc()

    def processed(self, audio_s: float, compute_s: float) -> None:
        """Account one decoded chunk, and keep the windowed real-time factor current (O(1) amortized)."""
        self.audio_seconds.inc(audio_s)
        self.compute_seconds.inc(compute_s)
        now = time.monotonic()
        w = self._window
        w.append((now, audio_s, compute_s))
        self._sum_audio += audio_s
        self._sum_compute += compute_s
        while w and w[0][0] < now - 10.0:
            _, a, c = w.popleft()
            self._sum_audio -= a
            self._sum_compute -= c
        if self._sum_audio > 1e-9:
            self.rtf.set(max(0.0, self._sum_compute) / self._sum_audio)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the HTTP exporter in a daemon thread; returns the bound port (0 picks one)."""
        from prometheus_client import start_http_server

        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.shutdown()
            http.server_close()


class _ProcessWide:
    """Re-exports the process-wide default registry (bus producer/consumer counters, process CPU and
    memory) on the node's endpoint, without putting the node's own metrics there."""

    def collect(self):
        from prometheus_client import REGISTRY

        yield from REGISTRY.collect()
