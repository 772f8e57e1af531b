"""Consumers: consumer groups, ack after handling, claim of stale messages, dead letters, dedup.

Per read batch: XREADGROUP, one ZMSCORE on the group's done-set (skip envelope ids already
handled), run the handler, then one Lua script per commit batch that, for each message,
atomically: checks the done-set again, publishes the handler's outputs (if not done), adds
the envelope id to the done-set and XACKs. See `services.bus` for the guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from prometheus_client import Counter, Histogram
from redis.exceptions import ResponseError
from wakeline.v1 import bus_pb2

from services.bus.core import F_ID, F_TS, TRANSIENT_ERRORS, Backoff, Bus, decode, encode

log = logging.getLogger("wakeline.bus.consumer")

HANDLED = Counter("wakeline_bus_handled_total", "Envelopes handled and acked", ["kind"])
DUPLICATES = Counter("wakeline_bus_duplicates_total", "Redeliveries skipped by envelope id", ["kind"])
FAILURES = Counter("wakeline_bus_handler_failures_total", "Handler exceptions", ["kind"])
DEAD = Counter("wakeline_bus_dead_letters_total", "Envelopes moved to the dead-letter stream", ["kind"])
QUEUE_LATENCY = Histogram("wakeline_bus_queue_latency_seconds", "Publish to handler start (first delivery)", ["kind"],
                          buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30))

# For a batch of messages: those whose envelope id is not yet in the done-set (nor earlier in the
# batch) get their outputs published and their id added; all are acked. Bulk ZMSCORE/ZADD/XACK keep
# the per-message cost in Redis low.
_COMMIT_LUA = """
local n = tonumber(ARGV[5])
local msgids, eids, first, nouts = {}, {}, {}, {}
local i = 6
for m = 1, n do
  msgids[m], eids[m], nouts[m] = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  first[m] = i + 3
  i = i + 3 + 5 * nouts[m]
end
local scores = redis.call('ZMSCORE', KEYS[2], unpack(eids))
local fresh, seen, zargs = {}, {}, {}
for m = 1, n do
  local isnew = (not scores[m]) and (not seen[eids[m]])
  seen[eids[m]] = true
  if isnew then
    local j = first[m]
    for _ = 1, nouts[m] do
      redis.call('XADD', KEYS[tonumber(ARGV[j])], 'MAXLEN', '~', ARGV[3], '*',
                 'id', ARGV[j + 1], 'type', ARGV[j + 2], 'data', ARGV[j + 3], 'ts', ARGV[j + 4])
      j = j + 5
    end
    zargs[#zargs + 1] = ARGV[2]
    zargs[#zargs + 1] = eids[m]
  end
  fresh[m] = isnew and 1 or 0
end
if #zargs > 0 then redis.call('ZADD', KEYS[2], unpack(zargs)) end
redis.call('XACK', KEYS[1], ARGV[1], unpack(msgids))
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return fresh
"""


def _id_key(mid: bytes) -> tuple[int, int]:
    ms, _, seq = mid.partition(b"-")
    return int(ms), int(seq or 0)


class Outbound(NamedTuple):
    """A message a handler wants published atomically with its done-mark, to an explicit stream."""

    stream: str
    message: object


_READ_AHEAD_S = 0.05
_COMMIT_BATCH = 1000  # bounded by Lua's unpack() stack

Handler = Callable[[object], Awaitable[object]]


class _Consumer:
    kind = "envelope"

    def __init__(self, bus: Bus, stream: str, group: str, consumer: str, concurrency: int = 1,
                 start_id: str = "0") -> None:
        if not group or not consumer:
            raise ValueError("group and consumer names must be non-empty")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.bus, self.cfg = bus, bus.cfg
        self.stream, self.group, self.consumer = stream, group, consumer
        self.concurrency, self.start_id = concurrency, start_id
        self.done_key, self.errors_key = bus.keys.done(group), bus.keys.errors(group)
        self._commit = bus.redis.register_script(_COMMIT_LUA)
        self._in_flight: dict[bytes, bytes] = {}  # msgid -> envelope id, read and not yet acked
        self._tasks: set[asyncio.Task] = set()
        self._completed: list[tuple[bytes, bytes, list]] = []
        self._dead: list[tuple[bytes, dict, int, str]] = []
        self._wake_commit = asyncio.Event()
        self._progress = asyncio.Event()
        self._stopping = False
        self._claim_cursor: bytes | str = "0-0"
        self._handler_s: float | None = None  # moving average of handler run time
        self.handled = self.duplicates = self.dead_lettered = self.failures = 0

    def stop(self) -> None:
        """Ask `run` to return after in-flight messages are handled and committed."""
        self._stopping = True
        self._progress.set()

    async def run(self, handler: Handler) -> None:
        """Consume until `stop()` (or cancellation); see the module docstring of `services.bus`."""
        self._handler = handler
        committer = asyncio.create_task(self._commit_loop(), name=f"bus-{self.kind}-commit")
        backoff = Backoff()
        cursor = "0"  # first our own pending messages from a previous life, then new ones (">")
        history = True
        last_claim = 0.0
        claim_every = max(0.05, self.cfg.visibility_timeout_s / 2)
        try:
            await self._ensure_group()
            while not self._stopping:
                try:
                    free = await self._wait_capacity()
                    if free == 0:
                        continue
                    now = time.monotonic()
                    if now - last_claim >= claim_every:
                        last_claim = now
                        await self._claim(free)
                        free = self._free()
                        if free == 0:
                            continue
                    resp = await self.bus.redis.xreadgroup(
                        self.group, self.consumer, {self.stream: cursor}, count=free,
                        block=None if history else min(self.cfg.block_ms, int(claim_every * 1000)))
                    entries = resp[0][1] if resp else []
                    if history:
                        if not entries:
                            cursor, history = ">", False
                            continue
                        cursor = entries[-1][0]
                        await self._dispatch(entries, await self._delivery_counts(entries))
                    else:
                        await self._dispatch(entries, None)
                    backoff.reset()
                except TRANSIENT_ERRORS as e:
                    log.warning("redis unreachable; retrying", extra={"error": str(e), "group": self.group})
                    await backoff.sleep()
                except ResponseError as e:
                    if "NOGROUP" in str(e):
                        log.warning("consumer group missing (Redis lost data?); recreating",
                                    extra={"group": self.group})
                        await self._ensure_group()
                        continue
                    log.error("redis refused a command; retrying", extra={"error": str(e), "group": self.group})
                    await backoff.sleep()
                except Exception:
                    # Keep consuming whatever went wrong with one batch; its messages stay pending and
                    # are claimed later. Leave the own-pending pass, which would hit the same entry again.
                    log.exception("consumer loop error; retrying", extra={"group": self.group})
                    cursor, history = ">", False
                    await backoff.sleep()
        except asyncio.CancelledError:
            for t in self._tasks:
                t.cancel()
            raise
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drain(), timeout=max(5.0, self.cfg.socket_timeout_s))
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer

    async def _drain(self) -> None:
        while self._completed or self._dead:
            self._wake_commit.set()
            await asyncio.sleep(0.01)

    async def _ensure_group(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self.bus.redis.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
                return
            except ResponseError as e:
                if "BUSYGROUP" in str(e):
                    return
                raise
            except TRANSIENT_ERRORS as e:
                if self._stopping:
                    return
                log.warning("redis unreachable; retrying", extra={"error": str(e)})
                await backoff.sleep()

    def _free(self) -> int:
        if self.concurrency == 1:
            if len(self._in_flight) >= 4 * self.cfg.read_count:
                return 0  # the committer is behind
            # Read ahead only what the handler gets through in ~_READ_AHEAD_S: fast handlers get big
            # batches (throughput), slow ones one message at a time, so that they do not hold
            # messages that idle peers of the group could be handling.
            if self._handler_s is None:
                return 1
            return max(1, min(self.cfg.read_count, int(_READ_AHEAD_S / max(self._handler_s, 1e-7))))
        return min(self.cfg.read_count, self.concurrency - len(self._tasks))

    async def _wait_capacity(self) -> int:
        free = self._free()
        if free == 0:
            self._progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._progress.wait(), timeout=0.5)
        return self._free()

    async def _delivery_counts(self, entries) -> dict[bytes, int]:
        """Delivery counts of messages now pending on this consumer (claimed or our own)."""
        ids = sorted((e[0] for e in entries), key=_id_key)
        rows = await self.bus.redis.xpending_range(
            self.stream, self.group, min=ids[0], max=ids[-1], count=len(ids) + len(self._in_flight) + 16,
            consumername=self.consumer)
        return {r["message_id"]: r["times_delivered"] for r in rows}

    async def _claim(self, free: int) -> None:
        idle_ms = int(self.cfg.visibility_timeout_s * 1000)
        # A cursor over the pending list: a long list of live messages must not hide stale ones behind it.
        resp = await self.bus.redis.xautoclaim(self.stream, self.group, self.consumer, idle_ms,
                                               self._claim_cursor, count=free)
        self._claim_cursor = resp[0]
        entries = [e for e in resp[1] if e is not None and e[0] is not None]
        if entries:
            log.info("claimed stale messages", extra={"count": len(entries), "group": self.group})
            await self._dispatch(entries, await self._delivery_counts(entries))

    async def _dispatch(self, entries, counts: dict[bytes, int] | None) -> None:
        stale = [mid for mid, f in entries if not f]  # trimmed away while pending
        entries = [(mid, f) for mid, f in entries if f and mid not in self._in_flight]
        if not entries:
            if stale:
                await self.bus.redis.xack(self.stream, self.group, *stale)
            return
        scores = await self.bus.redis.zmscore(self.done_key, [f.get(F_ID, b"") for _, f in entries])
        acks = list(stale)
        seen = set(self._in_flight.values())
        latency, now_ns = QUEUE_LATENCY.labels(self.kind), time.time_ns()
        inline = []
        for (mid, fields), score in zip(entries, scores, strict=True):
            eid = fields.get(F_ID, b"")
            if score is not None or eid in seen:
                acks.append(mid)
                continue
            n = counts.get(mid, 1) if counts is not None else 1
            if n > self.cfg.max_deliveries:
                err = await self.bus.redis.hget(self.errors_key, eid)
                reason = err.decode() if err else "delivered without ack (consumer died or timed out)"
                self._dead.append((mid, fields, n, reason))
                continue
            try:
                msg = decode(fields)
            except Exception as e:
                self._dead.append((mid, fields, n, f"malformed envelope: {e}"))
                continue
            seen.add(eid)
            if n == 1 and fields.get(F_TS, b"").isdigit():
                latency.observe(max(0.0, (now_ns - int(fields[F_TS])) / 1e9))
            self._in_flight[mid] = eid
            if self.concurrency == 1:
                inline.append((mid, eid, msg, n, fields))
            else:
                task = asyncio.create_task(self._handle(mid, eid, msg, n, fields))
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
        if acks:
            self.duplicates += len(acks) - len(stale)
            DUPLICATES.labels(self.kind).inc(len(acks) - len(stale))
            await self.bus.redis.xack(self.stream, self.group, *acks)
        if self._dead:
            self._wake_commit.set()
        for item in inline:
            await self._handle(*item)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._progress.set()

    async def _handle(self, mid: bytes, eid: bytes, msg, deliveries: int, fields) -> None:
        t0 = time.perf_counter()
        try:
            out = await self._handler(msg)
            outputs = self._outputs(out)
            dt = time.perf_counter() - t0
            self._handler_s = dt if self._handler_s is None else 0.8 * self._handler_s + 0.2 * dt
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.failures += 1
            FAILURES.labels(self.kind).inc()
            text = f"{type(e).__name__}: {e}"
            log.warning("handler failed", extra={"envelope_id": eid.decode(errors="replace"), "error": text,
                                                 "deliveries": deliveries})
            if deliveries >= self.cfg.max_deliveries:
                self._dead.append((mid, fields, deliveries, text))
                self._wake_commit.set()
            else:
                # Left pending: claimed again after the visibility timeout, by us or another consumer.
                self._in_flight.pop(mid, None)
                with contextlib.suppress(*TRANSIENT_ERRORS):
                    pipe = self.bus.redis.pipeline(transaction=False)
                    pipe.hset(self.errors_key, eid, text)
                    pipe.pexpire(self.errors_key, int(self.cfg.dedup_ttl_s * 1000))
                    await pipe.execute()
            return
        self._completed.append((mid, eid, outputs))
        self._wake_commit.set()

    def _outputs(self, out) -> list[tuple[str, dict]]:
        """The handler's return value as (stream, entry fields); raises on anything unpublishable,
        so that a bad output fails the handler (retry, then dead letter) instead of the commit."""
        if out is None:
            return []
        items = [out] if isinstance(out, (bus_pb2.Answer, bus_pb2.KeywordEvent, Outbound)) else list(out)
        res = []
        for o in items:
            if isinstance(o, Outbound):
                if not o.stream.startswith(self.bus.keys.prefix + ":"):
                    raise ValueError(f"outputs must go to bus streams of this namespace, got {o.stream}")
                res.append((o.stream, encode(o.message)))
            elif isinstance(o, bus_pb2.Answer):
                res.append((self.bus.keys.replies(o.edge_node), encode(o)))
            elif isinstance(o, bus_pb2.KeywordEvent):
                res.append((self.bus.keys.events, encode(o)))
            else:
                raise TypeError(f"handler returned {type(o).__name__}; expected Answer, KeywordEvent or Outbound")
        return res

    async def _commit_loop(self) -> None:
        backoff = Backoff()
        renew_every = max(0.05, self.cfg.visibility_timeout_s / 3)
        last_renew = last_trim = time.monotonic()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake_commit.wait(), timeout=renew_every)
            self._wake_commit.clear()
            try:
                if self._completed:
                    batch = self._completed
                    self._completed = []
                    try:
                        await self._commit_batch(batch)
                    except BaseException:
                        self._completed = batch + self._completed
                        raise
                if self._dead:
                    await self._dead_letter()
                now = time.monotonic()
                if now - last_renew >= renew_every and self._in_flight:
                    last_renew = now
                    # Reset idle time of messages still being handled so nobody claims them.
                    await self.bus.redis.xclaim(self.stream, self.group, self.consumer, 0,
                                                list(self._in_flight), justid=True)
                if now - last_trim >= 60:
                    last_trim = now
                    cutoff = int((time.time() - self.cfg.dedup_ttl_s) * 1000)
                    await self.bus.redis.zremrangebyscore(self.done_key, "-inf", cutoff)
                backoff.reset()
            except TRANSIENT_ERRORS as e:
                log.warning("commit failed; retrying", extra={"error": str(e), "group": self.group})
                self._wake_commit.set()
                await backoff.sleep()
            except Exception:
                log.exception("commit failed; retrying", extra={"group": self.group})
                self._wake_commit.set()
                await backoff.sleep()

    async def _commit_batch(self, batch) -> None:
        for s in range(0, len(batch), _COMMIT_BATCH):
            await self._commit_chunk(batch[s:s + _COMMIT_BATCH])

    async def _commit_chunk(self, batch) -> None:
        keys = [self.stream, self.done_key]
        index: dict[str, int] = {}
        args: list = [self.group, int(time.time() * 1000), self.cfg.maxlen, int(self.cfg.dedup_ttl_s * 1000),
                      len(batch)]
        for mid, eid, outputs in batch:
            args += [mid, eid, len(outputs)]
            for stream, f in outputs:
                if stream not in index:
                    keys.append(stream)
                    index[stream] = len(keys)  # Lua KEYS are 1-based
                args += [index[stream], f[F_ID], f[b"type"], f[b"data"], f[F_TS]]
        fresh = await self._commit(keys=keys, args=args)
        dups = len(batch) - sum(int(x) for x in fresh)
        for mid, _, _ in batch:
            self._in_flight.pop(mid, None)
        self.handled += len(batch) - dups
        self.duplicates += dups
        HANDLED.labels(self.kind).inc(len(batch) - dups)
        if dups:
            DUPLICATES.labels(self.kind).inc(dups)
        self._progress.set()

    async def _dead_letter(self) -> None:
        dead, self._dead = self._dead, []
        pipe = self.bus.redis.pipeline(transaction=True)
        for mid, fields, n, reason in dead:
            entry = dict(fields)
            entry.update({b"stream": self.stream, b"group": self.group, b"msgid": mid, b"error": reason,
                          b"deliveries": n})
            pipe.xadd(self.bus.keys.dead, entry, maxlen=self.cfg.maxlen, approximate=True)
            pipe.xack(self.stream, self.group, mid)
            if F_ID in fields:
                pipe.hdel(self.errors_key, fields[F_ID])
        try:
            await pipe.execute()
        except BaseException:
            self._dead = dead + self._dead
            raise
        for mid, fields, n, reason in dead:
            self._in_flight.pop(mid, None)
            log.error("dead-lettered", extra={"envelope_id": fields.get(F_ID, b"").decode(errors="replace"),
                                              "deliveries": n, "error": reason, "group": self.group})
        self.dead_lettered += len(dead)
        DEAD.labels(self.kind).inc(len(dead))
        self._progress.set()


class EventConsumer(_Consumer):
    """Consumes KeywordEvents from `<ns>:{bus}:events` as `consumer` in consumer group `group`.

    `concurrency` > 1 runs that many handlers at once (e.g. an LLM worker batching requests).
    """

    kind = "event"

    def __init__(self, bus: Bus, group: str, consumer: str, concurrency: int = 1, start_id: str = "0") -> None:
        super().__init__(bus, bus.keys.events, group, consumer, concurrency, start_id)


class ReplyConsumer(_Consumer):
    """Consumes Answers from `<ns>:{bus}:replies:<edge_node>` (group `edge:<edge_node>`)."""

    kind = "answer"

    def __init__(self, bus: Bus, edge_node: str, consumer: str | None = None, concurrency: int = 1) -> None:
        super().__init__(bus, bus.keys.replies(edge_node), f"edge:{edge_node}", consumer or edge_node, concurrency)
