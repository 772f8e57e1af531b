"""The Redis Streams bus between edge nodes and LLM workers (asyncio, redis.asyncio).

Keys (the `{bus}` hash tag keeps one namespace in one Redis Cluster slot, so the Lua commit
below is legal on a cluster):

    <ns>:{bus}:events                 KeywordEvents, edge -> workers; one consumer group per worker pool
    <ns>:{bus}:replies:<edge_node>    Answers, workers -> the edge node owning the device (group "edge:<node>")
    <ns>:{bus}:dead                   dead letters: original fields + stream, group, msgid, error, deliveries
    <ns>:{bus}:done:<group>           sorted set envelope id -> handled-at ms (dedup, trimmed after dedup_ttl_s)
    <ns>:{bus}:errors:<group>         hash envelope id -> last handler error (for the dead letter)

Stream entry fields: `id` (event_id / answer_id), `type` (b"KeywordEvent" / b"Answer"), `data`
(the serialized protobuf), `ts` (publish wall clock, ns). Streams are capped with XADD MAXLEN ~ maxlen.

API::

    from services.bus import BusConfig, open_bus, EventProducer, EventConsumer, ReplyProducer, ReplyConsumer

    bus = await open_bus(BusConfig(url="redis://:pw@host:6379/0"))   # url=None: embedded Redis in data_dir
    prod = EventProducer(bus, spool_dir="/var/lib/wakeline/spool")   # default: cfg.spool_dir
    await prod.publish_event(event)      # True: in Redis; False: spooled on disk (fsync'd), replayed later
    await prod.publish_events([e1, e2])  # in order, one round trip
    await prod.flush(timeout=5.0)        # -> bool: everything so far is in Redis
    prod.spooled, prod.dropped           # spool depth; entries dropped from a full spool (oldest first)
    await prod.close()                   # unsent entries stay in the spool for the next start

    cons = EventConsumer(bus, group="llm", consumer="worker-1", concurrency=8)
    async def handle(event):             # KeywordEvent -> None | Answer | KeywordEvent | Outbound | list of those
        return Answer(answer_id=f"{event.event_id}:a", event_id=event.event_id, edge_node=event.edge_node, ...)
    task = asyncio.create_task(cons.run(handle)); ...; cons.stop(); await task
    cons.handled, cons.duplicates, cons.dead_lettered, cons.failures
    # Keep consumer names stable across restarts: a restarted consumer resumes its own pending
    # messages at once (others would wait for the visibility timeout). A new group starts at
    # start_id="0" (the whole stream); pass start_id="$" to see only new events.
    # Outbound(stream, message) sends a returned message to an explicit stream of this namespace.
    # concurrency=1 handles messages one after the other, reading ahead only what the handler gets
    # through in ~50 ms (slow handlers: one at a time, so idle peers of the group get work);
    # concurrency=N runs up to N handlers at once and reads only as many messages as it has free slots.

    await ReplyProducer(bus).publish_answer(answer)          # to answer.edge_node's reply stream; without
                                                              # spool_dir an outage raises to the caller
    await ReplyConsumer(bus, edge_node="edge-a").run(handler) # handler(Answer); group "edge:edge-a"
    await bus.stats(); await bus.redrive(count=100, group="llm")  # dead letters back to their streams
    await bus.close()                                         # also stops an embedded Redis
    url, stop = embedded_redis(dir)      # real redis-server on unix://<dir>/redis.sock, AOF on
    BusSettings().to_config()            # services.settings: env WAKELINE_BUS_URL, _NAMESPACE, _SPOOL_DIR, ...

Guarantees and what they rely on:

- At-least-once delivery. A message is acked only after its handler returned. A consumer that
  dies mid-message leaves it pending; any consumer of the group claims it (XAUTOCLAIM) once it
  has been idle for `visibility_timeout_s`. Consumers renew the idle time of messages they are
  still handling (XCLAIM JUSTID every visibility_timeout_s/3), so only dead or stuck consumers
  lose their messages. A handler exception leaves the message pending for a retry after the
  visibility timeout. After `max_deliveries` deliveries it goes to the dead-letter stream with
  the last error text (or "delivered without ack" when consumers died on it) and is acked.
- Exactly once as seen from outside, per group, within `dedup_ttl_s`: before handling, envelope
  ids already in the group's done-set are acked and skipped (producer duplicates after a spool
  replay, redeliveries). The messages a handler RETURNS are published by one Lua script that,
  atomically per message, re-checks the done-set, XADDs the outputs, adds the id to the done-set
  and XACKs. So a crash before the script leaves no output and a redelivery; a crash after it
  leaves the output, the done-mark and the ack; two consumers racing on one message (a claim
  after a stall) publish once. Handlers may run more than once: any side effect a handler
  performs ITSELF (instead of returning it) must be idempotent by envelope id. Answer ids must be
  deterministic per event (e.g. f"{event_id}:answer") so edge nodes can dedup as well.
- Producers never block on an outage: on a connection error the batch and everything after it
  goes to a bounded sqlite spool (synchronous=FULL, one file per producer process), replayed in
  order before any new event when Redis answers again, also after a restart. When the spool is
  full the oldest entries are dropped, counted (`dropped`, persisted; metric
  `wakeline_bus_spool_dropped_total`) and logged as a warning.
- Order: per producer, entries reach the stream in publish order (one pump task; spool replay
  first). Consumers with concurrency > 1 or several consumers handle out of order.
"""

from __future__ import annotations

from services.bus.consumer import EventConsumer, Outbound, ReplyConsumer
from services.bus.core import Bus, BusConfig, Keys, decode, embedded_redis, encode, open_bus
from services.bus.producer import EventProducer, ReplyProducer

__all__ = [
    "Bus",
    "BusConfig",
    "EventConsumer",
    "EventProducer",
    "Keys",
    "Outbound",
    "ReplyConsumer",
    "ReplyProducer",
    "decode",
    "embedded_redis",
    "encode",
    "open_bus",
]
