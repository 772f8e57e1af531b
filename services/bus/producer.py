"""Producers: batched, pipelined XADD with an on-disk spool while Redis is unreachable.

All writes of one producer go through a single pump task, in call order: concurrent
`publish_*` calls are coalesced into one pipelined round trip (group commit), so a busy
producer gets throughput and an idle one gets one-round-trip latency. When a write fails
with a connection error, that batch and everything after it goes to the spool and the
producer stays in spool mode until the spool has been replayed, so per-producer order holds
across outages and restarts. A replay that half succeeded is replayed again: the bus is
at-least-once and consumers drop duplicates by envelope id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from prometheus_client import Counter

from services.bus.core import F_DATA, F_ID, F_TS, F_TYPE, TRANSIENT_ERRORS, Backoff, Bus, encode
from services.bus.spool import Spool

log = logging.getLogger("wakeline.bus.producer")

PUBLISHED = Counter("wakeline_bus_published_total", "Envelopes written to Redis", ["kind"])
SPOOLED = Counter("wakeline_bus_spooled_total", "Envelopes written to the on-disk spool", ["kind"])

_REPLAY_BATCH = 500
_SCRIPT_BATCH = 1000

# One command for many XADDs: one reply to parse instead of one per entry (~2x producer throughput).
_XADD_MANY_LUA = """
local n = 0
for i = 2, #ARGV, 5 do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], 'MAXLEN', '~', ARGV[1], '*',
             'id', ARGV[i + 1], 'type', ARGV[i + 2], 'data', ARGV[i + 3], 'ts', ARGV[i + 4])
  n = n + 1
end
return n
"""


class _Producer:
    kind = "envelope"

    def __init__(self, bus: Bus, spool_path: str | Path | None) -> None:
        self.bus = bus
        self.spool = Spool(spool_path, bus.cfg.spool_max_events) if spool_path else None
        # Entries left from a previous run go out before anything new.
        self._degraded = bool(self.spool and len(self.spool))
        self._pending: list[tuple[str, dict, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._sending = False  # a batch taken from _pending is on its way to Redis
        self._xadd_many = bus.redis.register_script(_XADD_MANY_LUA)

    @property
    def spooled(self) -> int:
        """Entries waiting in the spool."""
        return len(self.spool) if self.spool else 0

    @property
    def dropped(self) -> int:
        """Entries ever dropped from a full spool (persisted across restarts)."""
        return self.spool.dropped if self.spool else 0

    async def _publish(self, items: list[tuple[str, dict]]) -> bool:
        if self._closed:
            raise RuntimeError("producer is closed")
        if not items:
            return True
        if self._task is None:
            self._task = asyncio.create_task(self._pump(), name=f"bus-{self.kind}-producer")
        if self._degraded:
            self._spool(items)
            self._wake.set()
            return False
        fut = asyncio.get_running_loop().create_future()
        for i, (stream, fields) in enumerate(items):
            self._pending.append((stream, fields, fut if i == len(items) - 1 else None))
        self._wake.set()
        return await fut

    def _spool(self, items: list[tuple[str, dict]]) -> None:
        self.spool.append(items)
        SPOOLED.labels(self.kind).inc(len(items))

    async def _xadd(self, items) -> None:
        # Sequential script calls, not a pipeline: redis-py adds a SCRIPT EXISTS round trip to
        # every pipeline holding a script, and one call already carries up to _SCRIPT_BATCH entries.
        for s in range(0, len(items), _SCRIPT_BATCH):
            keys: list[str] = []
            index: dict[str, int] = {}
            args: list = [self.bus.cfg.maxlen]
            for stream, f in items[s:s + _SCRIPT_BATCH]:
                if stream not in index:
                    keys.append(stream)
                    index[stream] = len(keys)
                args += [index[stream], f[F_ID], f[F_TYPE], f[F_DATA], f[F_TS]]
            await self._xadd_many(keys=keys, args=args)

    async def _pump(self) -> None:
        backoff = Backoff()
        batch: list = []
        try:
            while True:
                if self._degraded:
                    if await self._replay():
                        backoff.reset()
                    else:
                        await backoff.sleep()
                    continue
                if not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch, self._pending = self._pending, []
                self._sending = True
                try:
                    await self._xadd([(s, f) for s, f, _ in batch])
                except TRANSIENT_ERRORS as e:
                    if self.spool is None:
                        self._fail(batch, e)
                        batch = []
                        continue
                    batch, self._pending = batch + self._pending, []
                    log.warning("redis unreachable: spooling to disk", extra={"error": str(e), "kind": self.kind})
                    try:
                        self._spool([(s, f) for s, f, _ in batch])
                    except Exception as se:  # disk full, unwritable spool: the callers must know
                        log.error("spool write failed", extra={"error": str(se), "entries": len(batch)})
                        self._fail(batch, se)
                        batch = []
                        continue
                    self._degraded = True
                    self._resolve(batch, False)
                    batch = []
                    continue
                except Exception as e:  # e.g. OOM or READONLY: the caller decides
                    self._fail(batch, e)
                    batch = []
                    continue
                finally:
                    self._sending = False
                PUBLISHED.labels(self.kind).inc(len(batch))
                self._resolve(batch, True)
                batch = []
        finally:
            # Cancelled (close) with writes in flight: keep them on disk rather than lose them.
            left, self._pending = batch + self._pending, []
            try:
                if left and self.spool is not None:
                    self._spool([(s, f) for s, f, _ in left])
                self._resolve(left, False)
            except Exception as e:
                log.error("could not spool unsent entries at close", extra={"error": str(e), "entries": len(left)})
                self._fail(left, e)

    @staticmethod
    def _resolve(batch, value: bool) -> None:
        for *_, fut in batch:
            if fut and not fut.done():
                fut.set_result(value)

    @staticmethod
    def _fail(batch, exc: BaseException) -> None:
        for *_, fut in batch:
            if fut and not fut.done():
                fut.set_exception(exc)

    async def _replay(self) -> bool:
        """Write the spool to Redis in order; True when it is empty and direct mode is back."""
        while len(self.spool):
            rows = self.spool.peek(_REPLAY_BATCH)
            try:
                await self._xadd([(stream, fields) for _, stream, fields in rows])
            except TRANSIENT_ERRORS:
                return False
            except Exception as e:
                log.error("spool replay failed; retrying", extra={"error": str(e), "kind": self.kind})
                return False
            self.spool.remove_through(rows[-1][0])
            PUBLISHED.labels(self.kind).inc(len(rows))
        # No await since the emptiness check: no publish can slip in between.
        self._degraded = False
        log.info("spool replayed; publishing directly again", extra={"kind": self.kind})
        return True

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything published so far is in Redis (spool replayed); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._pending or self._sending or self._degraded:
            if self._task is None:
                self._task = asyncio.create_task(self._pump(), name=f"bus-{self.kind}-producer")
            if deadline is not None and loop.time() > deadline:
                return False
            self._wake.set()
            await asyncio.sleep(0.01)
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Flush for up to `timeout` seconds, then stop; what is not in Redis stays in the spool."""
        if self._closed:
            return
        if self._pending or self._sending:
            await self.flush(timeout)
        self._closed = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.spool:
            self.spool.close()


class EventProducer(_Producer):
    """Publishes KeywordEvents to `<ns>:{bus}:events`, spooling to `spool_dir` while Redis is down.

    One spool directory per producer process (the edge node): `<spool_dir>/events.sqlite3`.
    """

    kind = "event"

    def __init__(self, bus: Bus, spool_dir: str | Path | None = None) -> None:
        super().__init__(bus, Path(spool_dir or bus.cfg.spool_dir) / "events.sqlite3")

    async def publish_event(self, event) -> bool:
        """Publish one KeywordEvent; True when it is in Redis, False when spooled (durable on disk)."""
        return await self._publish([(self.bus.keys.events, encode(event))])

    async def publish_events(self, events) -> bool:
        """Publish several KeywordEvents in order, in one round trip."""
        return await self._publish([(self.bus.keys.events, encode(e)) for e in events])


class ReplyProducer(_Producer):
    """Publishes Answers to `<ns>:{bus}:replies:<answer.edge_node>`.

    Without `spool_dir`, a Redis outage raises to the caller (workers normally publish answers
    atomically with their done-mark instead: see `EventConsumer`).
    """

    kind = "answer"

    def __init__(self, bus: Bus, spool_dir: str | Path | None = None) -> None:
        super().__init__(bus, Path(spool_dir) / "replies.sqlite3" if spool_dir else None)

    async def publish_answer(self, answer) -> bool:
        """Publish one Answer to its edge node's reply stream; True when in Redis, False when spooled."""
        return await self._publish([(self.bus.keys.replies(answer.edge_node), encode(answer))])
