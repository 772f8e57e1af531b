"""Bus behaviour against a real redis-server: delivery, dedup, dead letters, spool, replies, embedded Redis."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

import pytest
from wakeline.v1 import bus_pb2

from services.bus import (
    BusConfig,
    EventConsumer,
    EventProducer,
    Outbound,
    ReplyConsumer,
    ReplyProducer,
    decode,
    embedded_redis,
    encode,
    open_bus,
)
from services.bus.spool import SPOOL_DROPPED, Spool
from services.settings import BusSettings
from tests.conftest import free_port


def event(i: int, node: str = "edge-a", eid: str | None = None) -> bus_pb2.KeywordEvent:
    return bus_pb2.KeywordEvent(event_id=eid or f"ev-{i:05d}-{uuid.uuid4().hex[:6]}", device_id=f"dev-{i % 3}",
                                edge_node=node, keyword="lights on", score=0.9, attributes={"seq": str(i)})


def answer_for(ev: bus_pb2.KeywordEvent) -> bus_pb2.Answer:
    return bus_pb2.Answer(answer_id=f"{ev.event_id}:answer", event_id=ev.event_id, device_id=ev.device_id,
                          edge_node=ev.edge_node, keyword=ev.keyword, text="ok")


def cfg(url: str, tmp_path, **kw) -> BusConfig:
    base = dict(url=url, spool_dir=str(tmp_path / "spool"), visibility_timeout_s=0.3, max_deliveries=3,
                connect_timeout_s=0.3, socket_timeout_s=2.0, block_ms=100)
    base.update(kw)
    return BusConfig(**base)


async def consume_until(cons, handler, cond, timeout: float = 10.0) -> None:
    """Run `cons` until `cond()` holds, then stop it and wait for it to drain."""
    task = asyncio.create_task(cons.run(handler))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if task.done():
            await task
        if loop.time() > deadline:
            task.cancel()
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
    cons.stop()
    await asyncio.wait_for(task, 10)


async def stream_ids(bus, key: str) -> list[str]:
    return [f[b"id"].decode() for _, f in await bus.redis.xrange(key)]


def test_config_validation_and_settings(monkeypatch):
    with pytest.raises(ValueError, match="namespace"):
        BusConfig(namespace="a{b}")
    with pytest.raises(ValueError, match="max_deliveries"):
        BusConfig(max_deliveries=0)
    monkeypatch.setenv("WAKELINE_BUS_URL", "redis://u:secret@h:1/0")
    monkeypatch.setenv("WAKELINE_BUS_MAX_DELIVERIES", "7")
    c = BusSettings().to_config()
    assert (c.url, c.max_deliveries) == ("redis://u:secret@h:1/0", 7)


def test_bus_settings_defaults_are_the_config_defaults(monkeypatch):
    # BusSettings repeats BusConfig's fields (settings for main(), a dataclass for the library):
    # with no WAKELINE_BUS_* set, the two must agree
    for k in [k for k in os.environ if k.startswith("WAKELINE_BUS_")]:
        monkeypatch.delenv(k)
    assert BusSettings().to_config() == BusConfig()


def test_envelope_roundtrip_and_validation():
    ev = event(1)
    fields = encode(ev)
    assert fields[b"id"] == ev.event_id.encode() and fields[b"type"] == b"KeywordEvent"
    assert decode(fields) == ev
    with pytest.raises(ValueError, match="non-empty id"):
        encode(bus_pb2.Answer())
    with pytest.raises(ValueError, match="unknown envelope type"):
        decode({b"type": b"Nope", b"data": b""})


def test_publish_consume_answers_atomically(redis_url, tmp_path):
    async def main():
        bus = await open_bus(cfg(redis_url, tmp_path))
        prod = EventProducer(bus)
        evs = [event(i, node="edge-a" if i % 2 else "edge-b") for i in range(200)]
        assert await prod.publish_events(evs[:100])
        assert all(await asyncio.gather(*[prod.publish_event(e) for e in evs[100:]]))
        assert await stream_ids(bus, bus.keys.events) == [e.event_id for e in evs]  # producer order kept
        seen = []
        cons = EventConsumer(bus, "llm", "w1", concurrency=8)

        async def handle(ev):
            seen.append(ev.event_id)
            await asyncio.sleep(0.001)
            return answer_for(ev)

        await consume_until(cons, handle, lambda: cons.handled == 200)
        assert sorted(seen) == sorted(e.event_id for e in evs)
        a = await stream_ids(bus, bus.keys.replies("edge-a"))
        b = await stream_ids(bus, bus.keys.replies("edge-b"))
        assert sorted(a) == sorted(f"{e.event_id}:answer" for e in evs if e.edge_node == "edge-a")
        assert len(b) == 100
        assert (await bus.redis.xpending(bus.keys.events, "llm"))["pending"] == 0
        assert await bus.redis.zcard(bus.keys.done("llm")) == 200
        stats = await bus.stats()
        assert stats["streams"][bus.keys.events]["groups"]["llm"]["pending"] == 0
        await prod.close()
        await bus.close()

    asyncio.run(main())


def test_duplicates_and_redelivery_are_handled_once(redis_url, tmp_path):
    async def main():
        bus = await open_bus(cfg(redis_url, tmp_path))
        prod = EventProducer(bus)
        evs = [event(i) for i in range(20)]
        # The same envelope published twice (e.g. a spool replay that had half succeeded).
        await prod.publish_events(evs + evs[:5])
        calls: dict[str, int] = {}
        crash_once = {evs[7].event_id}

        async def handle(ev):
            calls[ev.event_id] = calls.get(ev.event_id, 0) + 1
            if ev.event_id in crash_once:
                crash_once.clear()
                raise RuntimeError("transient failure")
            return answer_for(ev)

        cons = EventConsumer(bus, "llm", "w1")
        await consume_until(cons, handle, lambda: cons.handled == 20)
        replies = await stream_ids(bus, bus.keys.replies("edge-a"))
        assert sorted(replies) == sorted(f"{e.event_id}:answer" for e in evs)  # each answer exactly once
        assert calls[evs[7].event_id] == 2  # failed, left pending, claimed again, succeeded
        assert cons.duplicates >= 5 and cons.failures == 1
        # Redelivery of an already-done id (a second pool member sees it again): skipped, no second answer.
        await prod.publish_event(evs[3])
        cons2 = EventConsumer(bus, "llm", "w2")
        n_calls = sum(calls.values())
        await consume_until(cons2, handle, lambda: cons2.duplicates == 1)
        assert sum(calls.values()) == n_calls
        assert len(await stream_ids(bus, bus.keys.replies("edge-a"))) == 20
        await prod.close()
        await bus.close()

    asyncio.run(main())


def test_commit_is_idempotent_when_two_consumers_race(redis_url, tmp_path):
    """Two consumers finishing the same message (a claim after a stall) publish one answer."""

    async def main():
        bus = await open_bus(cfg(redis_url, tmp_path))
        ev = event(1)
        await EventProducer(bus).publish_event(ev)
        await bus.redis.xgroup_create(bus.keys.events, "llm", id="0")
        resp = await bus.redis.xreadgroup("llm", "a", {bus.keys.events: ">"}, count=1)
        mid = resp[0][1][0][0]
        a, b = EventConsumer(bus, "llm", "a"), EventConsumer(bus, "llm", "b")
        out = a._outputs(answer_for(ev))
        await a._commit_batch([(mid, ev.event_id.encode(), out)])
        await b._commit_batch([(mid, ev.event_id.encode(), out)])
        assert (a.handled, b.handled, b.duplicates) == (1, 0, 1)
        assert len(await stream_ids(bus, bus.keys.replies(ev.edge_node))) == 1
        await bus.close()

    asyncio.run(main())


def test_poison_and_malformed_messages_are_dead_lettered(redis_url, tmp_path, caplog):
    async def main():
        bus = await open_bus(cfg(redis_url, tmp_path, visibility_timeout_s=0.2, max_deliveries=3))
        prod = EventProducer(bus)
        poison = event(0, eid="poison-1")
        evs = [event(i) for i in range(1, 10)]
        await prod.publish_events([evs[0], poison, *evs[1:]])
        await bus.redis.xadd(bus.keys.events, {b"id": b"junk-1", b"type": b"Garbage", b"data": b"\x00", b"ts": b"x"})
        tries = []

        async def handle(ev):
            if ev.event_id == "poison-1":
                tries.append(1)
                raise ValueError("cannot build a prompt")
            return None

        cons = EventConsumer(bus, "llm", "w1")
        await consume_until(cons, handle, lambda: cons.dead_lettered == 2 and cons.handled == 9)
        assert len(tries) == 3
        dead = {f[b"id"]: f for _, f in await bus.redis.xrange(bus.keys.dead)}
        assert dead[b"poison-1"][b"error"] == b"ValueError: cannot build a prompt"
        assert dead[b"poison-1"][b"deliveries"] == b"3" and dead[b"poison-1"][b"group"] == b"llm"
        assert decode(dead[b"poison-1"]) == poison  # the original envelope is kept for inspection
        assert dead[b"junk-1"][b"error"].startswith(b"malformed envelope")
        assert (await bus.redis.xpending(bus.keys.events, "llm"))["pending"] == 0
        # After a fix, the dead letters go back; the poison is handled, the junk is dead again.
        assert await bus.redrive(count=10, group="other") == 0
        assert await bus.redrive(count=10, group="llm") == 2
        fixed = []

        async def fixed_handler(ev):
            fixed.append(ev.event_id)

        cons2 = EventConsumer(bus, "llm", "w2")
        await consume_until(cons2, fixed_handler, lambda: cons2.handled == 1 and cons2.dead_lettered == 1)
        assert fixed == ["poison-1"]
        assert [f[b"id"] for _, f in await bus.redis.xrange(bus.keys.dead)] == [b"junk-1"]
        await prod.close()
        await bus.close()

    with caplog.at_level(logging.ERROR, logger="wakeline.bus.consumer"):
        asyncio.run(main())
    assert any(r.getMessage() == "dead-lettered" for r in caplog.records)


def test_spool_overflow_drops_oldest_and_counts(tmp_path, caplog):
    before = SPOOL_DROPPED._value.get()
    sp = Spool(tmp_path / "s.sqlite3", max_events=10)
    with caplog.at_level(logging.WARNING, logger="wakeline.bus.spool"):
        for i in range(25):
            sp.append([("k", encode(event(i, eid=f"e{i}")))])
    assert len(sp) == 10 and sp.dropped == 15
    assert SPOOL_DROPPED._value.get() - before == 15
    assert any("spool full" in r.getMessage() for r in caplog.records)
    assert [f[b"id"] for _, _, f in sp.peek(100)] == [f"e{i}".encode() for i in range(15, 25)]
    sp.close()
    sp = Spool(tmp_path / "s.sqlite3", max_events=10)  # the count survives a restart
    assert (len(sp), sp.dropped) == (10, 15)
    sp.append([("k", encode(event(i, eid=f"x{i}"))) for i in range(12)])  # one batch larger than the bound
    assert [f[b"id"] for _, _, f in sp.peek(100)] == [f"x{i}".encode() for i in range(2, 12)]
    assert sp.dropped == 27
    sp.close()


def test_overflow_while_redis_down_then_replay_newest(tmp_path):
    async def main():
        port = free_port()
        bus = await open_bus(cfg(f"redis://127.0.0.1:{port}/0", tmp_path, spool_max_events=10))
        prod = EventProducer(bus)
        evs = [event(i) for i in range(25)]
        for e in evs:
            assert await prod.publish_event(e) is False
        assert (prod.spooled, prod.dropped) == (10, 15)
        await prod.close()
        await bus.close()
        return port, evs

    port, evs = asyncio.run(main())
    from tests.conftest import RedisProcess

    r = RedisProcess(port=port).start()
    try:
        async def replay():
            bus = await open_bus(cfg(r.url, tmp_path, spool_max_events=10))
            prod = EventProducer(bus)  # a restarted edge node finds its spool and replays it first
            assert prod.spooled == 10
            assert await prod.flush(timeout=10)
            assert await stream_ids(bus, bus.keys.events) == [e.event_id for e in evs[15:]]
            await prod.close()
            await bus.close()

        asyncio.run(replay())
    finally:
        r.kill()


def test_replies_reach_only_their_edge_node(redis_url, tmp_path):
    async def main():
        bus = await open_bus(cfg(redis_url, tmp_path))
        rp = ReplyProducer(bus)
        answers = [answer_for(event(i, node=["edge-a", "edge-b"][i % 2])) for i in range(10)]
        for a in answers:
            assert await rp.publish_answer(a)
        got = []
        cons = ReplyConsumer(bus, "edge-a")

        async def handle(ans):
            got.append(ans)

        await consume_until(cons, handle, lambda: cons.handled == 5)
        assert [a.answer_id for a in got] == [a.answer_id for a in answers if a.edge_node == "edge-a"]
        with pytest.raises(ValueError):
            ReplyConsumer(bus, "")
        await rp.close()
        await bus.close()

    asyncio.run(main())


def test_handler_outputs_must_stay_in_namespace(redis_url, tmp_path):
    async def main():
        bus = await open_bus(cfg(redis_url, tmp_path))
        ev = event(1)
        await EventProducer(bus).publish_event(ev)
        cons = EventConsumer(bus, "g", "c")

        async def handle(e):
            return [Outbound(bus.keys.replies("x"), answer_for(e)), Outbound("other:stream", answer_for(e))]

        await consume_until(cons, handle, lambda: cons.failures >= 1)
        assert await bus.redis.xlen(bus.keys.replies("x")) == 0  # nothing published on a failed handler

        async def no_id(e):  # an Answer without its idempotency key fails the handler, not the commit
            return bus_pb2.Answer(edge_node="x")

        cons2 = EventConsumer(bus, "g2", "c")
        await consume_until(cons2, no_id, lambda: cons2.dead_lettered == 1)
        assert cons2.failures == 3
        await bus.close()

    asyncio.run(main())


def test_embedded_redis_keeps_data_across_restart(tmp_path):
    async def roundtrip(url, write: bool):
        bus = await open_bus(BusConfig(url=url, spool_dir=str(tmp_path / "sp")))
        if write:
            await EventProducer(bus).publish_event(event(1, eid="persisted"))
        ids = await stream_ids(bus, bus.keys.events)
        await bus.close()
        return ids

    url, stop = embedded_redis(tmp_path / "r")
    assert url.startswith("unix://")
    assert asyncio.run(roundtrip(url, True)) == ["persisted"]
    stop()
    url, stop = embedded_redis(tmp_path / "r")
    try:
        assert asyncio.run(roundtrip(url, False)) == ["persisted"]
    finally:
        stop()


def test_cli_stats_and_tiny_bench(redis_url, tmp_path, capsys):
    from services.cli import main

    async def seed():
        bus = await open_bus(cfg(redis_url, tmp_path))
        await EventProducer(bus).publish_events([event(i) for i in range(3)])
        await bus.close()

    asyncio.run(seed())
    assert main(["bus", "stats", "--url", redis_url]) == 0
    assert "wakeline:{bus}:events" in capsys.readouterr().out
    out = tmp_path / "bench.json"
    assert main(["bus", "bench", "--url", redis_url, "--events", "300", "--consumers", "1",
                 "--paced-events", "50", "--rate", "500", "--out", str(out)]) == 0
    import json

    runs = json.loads(out.read_text())["runs"]
    assert [(r["mode"], r["handled"]) for r in runs] == [("throughput", 300), ("paced", 50)]


def test_slow_handler_keeps_its_lease(redis_url, tmp_path):
    """A handler running longer than the visibility timeout is not claimed by a live peer."""

    async def main():
        bus = await open_bus(cfg(redis_url, tmp_path, visibility_timeout_s=0.3))
        await EventProducer(bus).publish_event(event(1, eid="slow"))
        calls = []

        async def slow(ev):
            calls.append("a")
            await asyncio.sleep(1.2)
            return answer_for(ev)

        async def fast(ev):
            calls.append("b")
            return answer_for(ev)

        a = EventConsumer(bus, "llm", "a")
        ta = asyncio.create_task(a.run(slow))
        while not calls:
            await asyncio.sleep(0.01)
        b = EventConsumer(bus, "llm", "b")
        await consume_until(b, fast, lambda: a.handled == 1, timeout=5)
        a.stop()
        await ta
        assert calls == ["a"]
        assert len(await stream_ids(bus, bus.keys.replies("edge-a"))) == 1
        await bus.close()

    asyncio.run(main())


def test_url_with_password_and_bad_credentials(tmp_path):
    import subprocess
    import time

    from tests.conftest import redis_server_binary

    binary = redis_server_binary()
    if not binary:
        pytest.skip("no redis-server binary")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--requirepass", "s3cret"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async def main():
            for _ in range(100):
                bus = await open_bus(cfg(f"redis://default:s3cret@127.0.0.1:{port}/0", tmp_path))
                if await bus.ping():
                    break
                await bus.close()
                time.sleep(0.05)
            assert await EventProducer(bus).publish_event(event(1))
            assert "s3cret" not in (await bus.stats())["url"]
            await bus.close()
            with pytest.raises(RuntimeError, match="rejected the credentials"):
                await open_bus(cfg(f"redis://:wrong@127.0.0.1:{port}/0", tmp_path))

        asyncio.run(main())
    finally:
        proc.kill()
        proc.wait()


def test_restarted_consumer_resumes_its_own_pending_at_once(redis_url, tmp_path):
    async def main():
        bus = await open_bus(cfg(redis_url, tmp_path, visibility_timeout_s=60.0))
        evs = [event(i) for i in range(5)]
        await EventProducer(bus).publish_events(evs)
        await bus.redis.xgroup_create(bus.keys.events, "llm", id="0")
        # A previous life of consumer "w" read three messages and died before acking them.
        await bus.redis.xreadgroup("llm", "w", {bus.keys.events: ">"}, count=3)
        seen = []

        async def handle(ev):
            seen.append(ev.event_id)

        cons = EventConsumer(bus, "llm", "w")
        await consume_until(cons, handle, lambda: cons.handled == 5, timeout=5)  # far below the 60 s timeout
        assert seen == [e.event_id for e in evs]
        await bus.close()

    asyncio.run(main())


def test_streams_are_capped(redis_url, tmp_path):
    async def main():
        bus = await open_bus(cfg(redis_url, tmp_path, maxlen=100))
        prod = EventProducer(bus)
        for s in range(0, 2000, 100):
            await prod.publish_events([event(i) for i in range(s, s + 100)])
        n = await bus.redis.xlen(bus.keys.events)
        # MAXLEN ~ trims whole radix-tree nodes (100 entries each by default): approximate, never unbounded.
        assert 100 <= n <= 300, n
        await prod.close()
        await bus.close()

    asyncio.run(main())


def test_slow_handlers_share_the_load(redis_url, tmp_path):
    """Consumers with slow handlers read one message at a time, so an idle peer gets work."""

    async def main():
        bus = await open_bus(cfg(redis_url, tmp_path))
        await EventProducer(bus).publish_events([event(i) for i in range(20)])
        by: dict[str, int] = {"a": 0, "b": 0}

        def handler(name):
            async def handle(ev):
                by[name] += 1
                await asyncio.sleep(0.05)
            return handle

        a, b = EventConsumer(bus, "llm", "a"), EventConsumer(bus, "llm", "b")
        ta = asyncio.create_task(a.run(handler("a")))
        await consume_until(b, handler("b"), lambda: a.handled + b.handled == 20, timeout=10)
        a.stop()
        await ta
        assert min(by.values()) >= 5, by
        await bus.close()

    asyncio.run(main())


def test_embedded_redis_refuses_a_second_server_and_dies_with_its_parent(tmp_path):
    import subprocess
    import sys
    import time

    url, stop = embedded_redis(tmp_path / "r")
    try:
        with pytest.raises(RuntimeError, match="already serves"):
            embedded_redis(tmp_path / "r")
    finally:
        stop()
    # A parent killed with SIGKILL takes its embedded server with it.
    code = ("import sys, time; from services.bus import embedded_redis; "
            f"embedded_redis({str(tmp_path / 'r2')!r}); print('up', flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "up"
        parent.kill()
        parent.wait()
        deadline = time.time() + 10
        while True:
            try:
                url2, stop2 = embedded_redis(tmp_path / "r2")  # free again once the orphan is gone
                stop2()
                break
            except RuntimeError:
                assert time.time() < deadline, "the embedded server outlived its parent"
                time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_embedded_redis_starts_without_forking_a_process_with_grpc_threads(tmp_path):
    """An edge node opens its gRPC port before it starts its embedded Redis. A fork() while gRPC
    threads run can abort the child (seen once in CI: "embedded redis-server exited with -6"), so the
    server is spawned without Python code after the fork (setpriv sets PDEATHSIG), and gRPC never
    reports a fork."""
    import shutil
    import subprocess
    import sys

    if not shutil.which("setpriv"):
        pytest.skip("no setpriv (util-linux): the preexec_fn fallback forks")
    code = f"""
import threading, grpc
from concurrent import futures
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from services.bus import embedded_redis
srv = grpc.server(futures.ThreadPoolExecutor(2))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), srv)
port = srv.add_insecure_port("127.0.0.1:0")
srv.start()
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{{port}}"))
busy = threading.Event()
def hammer():
    while True:
        stub.Check(health_pb2.HealthCheckRequest())
        busy.set()
threading.Thread(target=hammer, daemon=True).start()
busy.wait(10)
for i in range(3):
    url, stop = embedded_redis({str(tmp_path)!r} + f"/r{{i}}")
    stop()
print("ok", flush=True)
"""
    env = {**os.environ, "GRPC_VERBOSITY": "INFO"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert "ok" in r.stdout, r.stderr[-2000:]
    assert "fork()" not in r.stderr, r.stderr[-2000:]
