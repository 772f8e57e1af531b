"""Prometheus metrics of the LLM service, on a registry of their own (several servers per process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30)


class LlmMetrics:
    """The service's counters, gauges and histograms; `serve(port)` exposes them over HTTP."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("wakeline_llm_ttft_seconds", "Time to first token (submit to first token)",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("wakeline_llm_inter_token_seconds", "Time between tokens of one request",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("wakeline_llm_request_seconds", "Request latency, submit to last token",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.step_time = Histogram("wakeline_llm_step_seconds", "Duration of one engine step",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("wakeline_llm_queue_depth", "Requests admitted, waiting for their first token",
                                 registry=r)
        self.running = Gauge("wakeline_llm_running_requests", "Requests decoding (running batch size)", registry=r)
        self.pending_tokens = Gauge("wakeline_llm_pending_tokens", "Prompt + max_tokens over pending requests",
                                    registry=r)
        self.tokens_per_s = Gauge("wakeline_llm_tokens_per_second", "Generated tokens/s over the last few seconds",
                                  registry=r)
        self.kv_cache_usage = Gauge("wakeline_llm_kv_cache_usage_ratio", "Fraction of the KV cache in use",
                                    registry=r)
        self.prompt_tokens = Counter("wakeline_llm_prompt_tokens", "Prompt tokens admitted", registry=r)
        self.generated_tokens = Counter("wakeline_llm_generated_tokens", "Tokens generated", registry=r)
        self.requests = Counter("wakeline_llm_requests", "Finished requests by reason", ["reason"], registry=r)
        self.aborted = Counter("wakeline_llm_aborted_requests",
                               "Requests aborted (client cancel, deadline, Abort RPC)", registry=r)
        self.rejected = Counter("wakeline_llm_rejected_requests", "Requests refused at admission", ["code"],
                                registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose /metrics on `port` (a daemon thread)."""
        start_http_server(port, addr=addr, registry=self.registry)
