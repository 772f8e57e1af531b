"""Continuous batching around `llm.Engine.step()` for asyncio callers.

One background thread owns the engine: it applies queued commands (add a request, abort one),
runs one `engine.step()` (which admits waiting requests, prefills in chunks and decodes the
running batch), and hands each step's outputs to the event loop. So new requests join the batch
between two steps, and an abort frees its KV cache before the next step. The asyncio side does
admission control, detokenization, stop strings, and metrics.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from llm.sampling import SamplingParams
from services.llm.detok import IncrementalDetokenizer
from services.llm.metrics import LlmMetrics

log = logging.getLogger("wakeline.llm.runner")


class AdmissionError(Exception):
    """The bounded queue is full (by requests or by tokens): refuse now, do not wait."""


class PromptTooLong(ValueError):
    """The prompt does not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_context: int) -> None:
        super().__init__(f"prompt has {prompt_tokens} tokens; the model's context is {max_context} tokens "
                         f"(at most {max_context - 1} prompt tokens leave room for one generated token)")
        self.prompt_tokens, self.max_context = prompt_tokens, max_context


@dataclass
class Delta:
    """One piece of a streamed generation."""

    text: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str = ""


@dataclass
class RequestState:
    request_id: str
    prompt_tokens: int
    max_tokens: int
    detok: IncrementalDetokenizer
    out: asyncio.Queue
    t_submit: float
    t_added: float | None = None
    t_first: float | None = None
    t_last: float | None = None
    completion_tokens: int = 0
    finished: bool = False
    finish_reason: str = ""

    @property
    def budget(self) -> int:
        return self.prompt_tokens + self.max_tokens

    def timing_ms(self) -> tuple[float, float, float]:
        """(queue, ttft, total) in ms."""
        end = self.t_last or time.perf_counter()
        q = ((self.t_added or end) - self.t_submit) * 1e3
        ttft = ((self.t_first or end) - self.t_submit) * 1e3
        return q, ttft, (end - self.t_submit) * 1e3


class EngineRunner:
    """Serves one engine to many asyncio callers with iteration-level batching.

    Args:
        engine: an `llm.engine.Engine` (add_request/step/abort/has_unfinished, tokenizer, max_context).
        max_pending_requests: requests admitted and unfinished, beyond which `submit` refuses.
        max_pending_tokens: sum of prompt + max_tokens over those requests, beyond which it refuses.
        default_max_tokens, max_tokens_limit: max_tokens when a request gives none, and its ceiling.
        metrics: where to record; a private `LlmMetrics` when None.
        on_fatal: `f(exc)` called on the event loop when `engine.step()` raised (e.g. turn health off).
    """

    def __init__(self, engine, *, max_pending_requests: int = 64, max_pending_tokens: int = 65536,
                 default_max_tokens: int = 128, max_tokens_limit: int = 2048,
                 metrics: LlmMetrics | None = None, on_fatal=None) -> None:
        if max_pending_requests < 1 or max_pending_tokens < 1:
            raise ValueError("max_pending_requests and max_pending_tokens must be >= 1")
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.max_context = int(engine.max_context)
        self.max_pending_requests = max_pending_requests
        self.max_pending_tokens = max_pending_tokens
        self.default_max_tokens = default_max_tokens
        self.max_tokens_limit = max_tokens_limit
        self.metrics = metrics or LlmMetrics()
        self.on_fatal = on_fatal  # called (on the loop) when engine.step() raised: the runner is dead
        self._reqs: dict[str, RequestState] = {}
        self._pending_tokens = 0
        self._cmds: queue.SimpleQueue = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._recent: collections.deque = collections.deque()  # (t, tokens) for tokens/s
        self.error: BaseException | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread; call from the event loop that will consume the outputs."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Abort everything and stop the engine thread."""
        for rid in list(self._reqs):
            self.abort(rid)
        self._stop.set()
        self._cmds.put(("wake", None, None))
        if self._thread:
            await asyncio.to_thread(self._thread.join, 30)

    @property
    def num_pending(self) -> int:
        return len(self._reqs)

    def stats(self) -> dict:
        """Pending requests and tokens, and the engine's KV-cache use when it reports one."""
        return {"pending_requests": len(self._reqs), "pending_tokens": self._pending_tokens,
                "kv_cache_usage": self._kv_usage()}

    # ---- requests ----------------------------------------------------------------------------

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a chat rendered with the model's chat template (generation prompt added)."""
        try:  # ids straight from the template: the rendered text already carries its BOS if any
            out = self.tokenizer.apply_chat_template(messages, tokenize=True)
        except TypeError:
            out = self.tokenizer.apply_chat_template(messages)
        return list(self.tokenizer.encode(out)) if isinstance(out, str) else list(out)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def submit(self, prompt_ids: list[int], sampling: SamplingParams | None = None,
               request_id: str | None = None) -> RequestState:
        """Admit a request or raise `PromptTooLong` / `AdmissionError` at once; it joins the next step.

        `sampling.max_tokens` is capped by `max_tokens_limit` and the room left in the context;
        None samples greedily with `default_max_tokens`. Its stop strings are applied here.
        """
        if self.error is not None:
            raise RuntimeError(f"engine thread died: {self.error!r}")
        sampling = sampling or SamplingParams(max_tokens=self.default_max_tokens)
        rid = request_id or uuid.uuid4().hex
        if rid in self._reqs:
            raise ValueError(f"request id {rid!r} is already running")
        n = len(prompt_ids)
        if n == 0:
            raise ValueError("empty prompt")
        if n >= self.max_context:
            raise PromptTooLong(n, self.max_context)
        max_tokens = min(sampling.max_tokens, self.max_tokens_limit, self.max_context - n)
        budget = n + max_tokens
        if len(self._reqs) >= self.max_pending_requests:
            self.metrics.rejected.labels("requests").inc()
            raise AdmissionError(f"queue full: {len(self._reqs)} requests pending (limit "
                                 f"{self.max_pending_requests})")
        if self._pending_tokens + budget > self.max_pending_tokens:
            self.metrics.rejected.labels("tokens").inc()
            raise AdmissionError(f"queue full: {self._pending_tokens} tokens pending + {budget} requested > "
                                 f"limit {self.max_pending_tokens}")
        st = RequestState(rid, n, max_tokens, IncrementalDetokenizer(self.tokenizer, sampling.stop),
                          asyncio.Queue(), time.perf_counter())
        self._reqs[rid] = st
        self._pending_tokens += budget
        self.metrics.prompt_tokens.inc(n)
        self._gauges()
        # stop strings are cut by this runner's detokenizer, so the engine gets none
        params = dataclasses.replace(sampling, max_tokens=max_tokens, stop=[])
        self._cmds.put(("add", rid, (list(map(int, prompt_ids)), params)))
        return st

    def abort(self, request_id: str, reason: str = "abort") -> bool:
        """Stop a request now: its KV cache is freed before the next step. False if unknown."""
        st = self._reqs.get(request_id)
        if st is None:
            return False
        self._cmds.put(("abort", request_id, None))
        self.metrics.aborted.inc()
        self._finish(st, reason, flush=False)
        return True

    async def stream(self, st: RequestState) -> AsyncIterator[Delta]:
        """Yield the request's deltas until the finished one; aborts it if the consumer goes away."""
        try:
            while True:
                d: Delta = await st.out.get()
                yield d
                if d.finished:
                    return
        finally:
            if not st.finished:
                self.abort(st.request_id)

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams | None = None,
                       request_id: str | None = None) -> tuple[RequestState, str, list[int]]:
        """Whole generation: (state, text, completion token ids)."""
        st = self.submit(prompt_ids, sampling, request_id)
        ids: list[int] = []
        async for d in self.stream(st):
            ids.extend(d.token_ids)
        return st, st.detok.text, ids

    # ---- the asyncio side of a step -----------------------------------------------------------

    def _on_outputs(self, outputs: list, t: float) -> None:
        m = self.metrics
        n_new = 0
        for o in outputs:
            st = self._reqs.get(o.request_id)
            if st is None:  # aborted in the meantime
                continue
            new = [int(i) for i in (o.new_token_ids or [])]
            text = ""
            if new:
                n_new += len(new)
                if st.t_first is None:
                    st.t_first = t
                    m.ttft.observe(t - st.t_submit)
                elif st.t_last is not None:
                    per = (t - st.t_last) / len(new)
                    for _ in new:
                        m.itl.observe(per)
                st.t_last = t
                st.completion_tokens += len(new)
                text = st.detok.push(new)
                if st.detok.stopped:
                    self._cmds.put(("abort", st.request_id, None))
                    self._finish(st, "stop", flush=False, text=text, ids=new)
                    continue
            if o.finished:
                self._finish(st, o.finish_reason or "stop", text=text, ids=new)
            elif new:
                st.out.put_nowait(Delta(text, new))
        if n_new:
            m.generated_tokens.inc(n_new)
            self._recent.append((t, n_new))
        while self._recent and t - self._recent[0][0] > 5.0:
            self._recent.popleft()
        span = max(t - self._recent[0][0], 1.0) if self._recent else 1.0
        m.tokens_per_s.set(sum(k for _, k in self._recent) / span)
        self._gauges()

    def _on_added(self, rid: str, t: float) -> None:
        st = self._reqs.get(rid)
        if st is not None and st.t_added is None:
            st.t_added = t

    def _on_error(self, rid: str | None, exc: BaseException) -> None:
        if rid is None and self.on_fatal is not None:
            self.on_fatal(exc)
        targets = [self._reqs[rid]] if rid in self._reqs else list(self._reqs.values()) if rid is None else []
        for st in targets:
            st.out.put_nowait(Delta("", [], True, f"error: {exc}"))
            self._finish(st, "error", flush=False, push=False)

    def _finish(self, st: RequestState, reason: str, flush: bool = True, push: bool = True, text: str = "",
                ids: list[int] | None = None) -> None:
        """End a request: one last Delta with its final tokens and any held-back text."""
        if st.finished:
            return
        st.finished, st.finish_reason = True, reason
        st.t_last = st.t_last or time.perf_counter()
        if push:
            st.out.put_nowait(Delta(text + (st.detok.flush() if flush else ""), ids or [], True, reason))
        self._reqs.pop(st.request_id, None)
        self._pending_tokens -= st.budget
        self.metrics.requests.labels(reason).inc()
        self.metrics.e2e.observe(st.t_last - st.t_submit)
        self._gauges()

    def _gauges(self) -> None:
        started = sum(1 for s in self._reqs.values() if s.t_first is not None)
        self.metrics.running.set(started)
        self.metrics.queue_depth.set(len(self._reqs) - started)
        self.metrics.pending_tokens.set(self._pending_tokens)
        kv = self._kv_usage()
        if kv is not None:
            self.metrics.kv_cache_usage.set(kv)

    def _kv_usage(self) -> float | None:
        fn = getattr(self.engine, "kv_cache_usage", None)
        try:
            if fn is not None:
                v = fn() if callable(fn) else fn
                return None if v is None else float(v)
            # a slot-based KV cache: the fraction of slots held by running requests
            return self.engine.num_running / self.engine.max_batch_size
        except Exception:
            return None

    # ---- the engine thread ---------------------------------------------------------------------

    def _call(self, fn, *args) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed under us at shutdown
            self._stop.set()

    def _apply(self, cmd) -> None:
        kind, rid, arg = cmd
        if kind == "add":
            prompt_ids, params = arg
            try:
                self.engine.add_request(rid, prompt_ids, params)
                self._call(self._on_added, rid, time.perf_counter())
            except Exception as e:  # e.g. the engine's own PromptTooLongError
                self._call(self._on_error, rid, e)
        elif kind == "abort":
            try:
                self.engine.abort(rid)
            except Exception:
                log.exception("engine.abort(%s) failed", rid)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:  # idle: sleep until a command arrives; busy: only take what is already there
                cmd = self._cmds.get_nowait() if self.engine.has_unfinished() else self._cmds.get()
            except queue.Empty:
                cmd = None
            while cmd is not None:
                self._apply(cmd)
                try:
                    cmd = self._cmds.get_nowait()
                except queue.Empty:
                    cmd = None
            if self._stop.is_set() or not self.engine.has_unfinished():
                continue
            t0 = time.perf_counter()
            try:
                outputs = self.engine.step()
            except Exception as e:
                log.exception("engine.step() failed; failing the running requests")
                self.error = e
                self._call(self._on_error, None, e)
                return
            t1 = time.perf_counter()
            self.metrics.step_time.observe(t1 - t0)
            if outputs:
                self._call(self._on_outputs, list(outputs), t1)
