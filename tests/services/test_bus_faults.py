"""Bus fault tests with real processes: kill -9 a consumer mid-batch, restart Redis under a producer,
start a producer while Redis is unreachable."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from wakeline.v1 import bus_pb2

from services.bus import BusConfig, EventConsumer, EventProducer, open_bus
from tests.conftest import REPO, RedisProcess, free_port

# A worker process: handles events slowly (so a kill lands mid-stream) and answers each one.
_WORKER = """
import asyncio, sys
from services.bus import BusConfig, EventConsumer, open_bus
from wakeline.v1 import bus_pb2

async def main(url, name, hang_after):
    bus = await open_bus(BusConfig(url=url, visibility_timeout_s=0.5, spool_dir="/tmp/unused-spool"))
    cons = EventConsumer(bus, "llm", name, concurrency=4)
    started = [0]

    async def handle(ev):
        started[0] += 1
        if 0 < hang_after < started[0]:
            await asyncio.sleep(3600)  # stuck mid-message, so messages are surely in flight at the kill
        await asyncio.sleep(0.008)
        return bus_pb2.Answer(answer_id=ev.event_id + ":answer", event_id=ev.event_id, edge_node=ev.edge_node)

    await cons.run(handle)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
"""


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")]))


def _event(i: int) -> bus_pb2.KeywordEvent:
    return bus_pb2.KeywordEvent(event_id=f"ev-{i:06d}", edge_node="edge-a", device_id="dev-1", keyword="stop")


def test_kill9_consumer_mid_stream_every_message_answered_exactly_once(redis_url, tmp_path):
    n = 1000

    async def publish():
        bus = await open_bus(BusConfig(url=redis_url, spool_dir=str(tmp_path / "spool")))
        assert await EventProducer(bus).publish_events([_event(i) for i in range(n)])
        await bus.close()

    async def replies_len():
        bus = await open_bus(BusConfig(url=redis_url, spool_dir=str(tmp_path / "spool")))
        try:
            return await bus.redis.xlen(bus.keys.replies("edge-a"))
        finally:
            await bus.close()

    async def pending_of(consumer: str) -> int:
        bus = await open_bus(BusConfig(url=redis_url, spool_dir=str(tmp_path / "spool")))
        try:
            rows = await bus.redis.xpending_range(bus.keys.events, "llm", "-", "+", 100, consumername=consumer)
            return len(rows)
        finally:
            await bus.close()

    asyncio.run(publish())
    # the victim answers 250 events, then hangs inside the handlers of the next ones (up to its
    # concurrency): the kill always lands with messages delivered and unacknowledged
    victim = subprocess.Popen([sys.executable, "-c", _WORKER, redis_url, "victim", "250"], env=_env())
    survivor = None
    try:
        deadline = time.time() + 30
        while asyncio.run(replies_len()) < 250 or asyncio.run(pending_of("victim")) == 0:
            assert victim.poll() is None and time.time() < deadline
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        done_at_kill = asyncio.run(replies_len())
        assert done_at_kill < n, "the victim finished before the kill; the test proves nothing"
        assert asyncio.run(pending_of("victim")) > 0, "nothing was in flight at the kill"
        survivor = subprocess.Popen([sys.executable, "-c", _WORKER, redis_url, "survivor"], env=_env())

        async def check():
            bus = await open_bus(BusConfig(url=redis_url, spool_dir=str(tmp_path / "spool")))
            deadline = time.time() + 40
            while await bus.redis.zcard(bus.keys.done("llm")) < n:
                assert time.time() < deadline, "not every event was handled"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            pending = (await bus.redis.xpending(bus.keys.events, "llm"))["pending"]
            ids = [f[b"id"].decode() for _, f in await bus.redis.xrange(bus.keys.replies("edge-a"))]
            await bus.close()
            return pending, ids

        pending, ids = asyncio.run(check())
        assert pending == 0 and asyncio.run(pending_of("victim")) == 0  # the survivor claimed them
        assert len(ids) == n, f"{len(ids) - len(set(ids))} duplicate answers"
        assert set(ids) == {f"ev-{i:06d}:answer" for i in range(n)}
    finally:
        for p in (victim, survivor):
            if p and p.poll() is None:
                p.kill()
                p.wait()


def test_redis_restart_under_producer_and_consumer_loses_nothing(redis_proc, tmp_path):
    """kill -9 Redis (AOF, fsync always) while a producer publishes and a consumer answers."""
    n = 600

    async def main():
        bus = await open_bus(BusConfig(url=redis_proc.url, spool_dir=str(tmp_path / "spool"), visibility_timeout_s=0.5,
                                       connect_timeout_s=0.3, socket_timeout_s=1.0, block_ms=100))
        prod = EventProducer(bus)
        cons = EventConsumer(bus, "llm", "w", concurrency=4)
        seen: list[str] = []

        async def handle(ev):
            seen.append(ev.event_id)
            return bus_pb2.Answer(answer_id=ev.event_id + ":answer", event_id=ev.event_id, edge_node=ev.edge_node)

        task = asyncio.create_task(cons.run(handle))
        spooled = 0
        loop = asyncio.get_running_loop()
        for i in range(n):
            if i == 200:
                await loop.run_in_executor(None, redis_proc.kill)
            if i == 400:
                await loop.run_in_executor(None, redis_proc.start)
            spooled += not await prod.publish_event(_event(i))
            await asyncio.sleep(0.001)
        assert spooled >= 150, "the outage did not reach the producer"
        assert await prod.flush(timeout=15)
        ids = [f[b"id"].decode() for _, f in await bus.redis.xrange(bus.keys.events)]
        # At-least-once: a batch in flight at the kill may be written twice; first occurrences keep order.
        assert list(dict.fromkeys(ids)) == [f"ev-{i:06d}" for i in range(n)]
        deadline = time.time() + 20
        while await bus.redis.zcard(bus.keys.done("llm")) < n:
            assert time.time() < deadline, "not every event was handled"
            await asyncio.sleep(0.05)
        cons.stop()
        await task
        answers = [f[b"id"].decode() for _, f in await bus.redis.xrange(bus.keys.replies("edge-a"))]
        assert sorted(answers) == [f"ev-{i:06d}:answer" for i in range(n)]  # exactly once each
        assert set(seen) == {f"ev-{i:06d}" for i in range(n)}
        await prod.close()
        await bus.close()

    asyncio.run(main())


def test_producer_started_while_redis_down_spools_then_replays_across_restart(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    cfg = dict(url=url, spool_dir=str(tmp_path / "spool"), connect_timeout_s=0.3)

    async def first_life():
        bus = await open_bus(BusConfig(**cfg))
        prod = EventProducer(bus)
        results = [await prod.publish_event(_event(i)) for i in range(50)]
        assert results == [False] * 50 and prod.spooled == 50
        await prod.close()  # the edge node stops; the spool stays on disk
        await bus.close()

    asyncio.run(first_life())
    assert (Path(cfg["spool_dir"]) / "events.sqlite3").exists()
    r = RedisProcess(port=port).start()
    try:
        async def second_life():
            bus = await open_bus(BusConfig(**cfg))
            prod = EventProducer(bus)
            assert prod.spooled == 50
            # New events wait behind the spooled ones: per-producer order holds across the restart.
            assert await prod.publish_event(_event(50)) is False
            assert await prod.flush(timeout=10)
            assert await prod.publish_event(_event(51)) is True
            ids = [f[b"id"].decode() for _, f in await bus.redis.xrange(bus.keys.events)]
            assert ids == [f"ev-{i:06d}" for i in range(52)]
            assert prod.spooled == 0 and prod.dropped == 0
            await prod.close()
            await bus.close()

        asyncio.run(second_life())
    finally:
        r.kill()


def test_consumer_waits_for_redis_then_consumes(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    async def main():
        bus = await open_bus(BusConfig(url=url, spool_dir=str(tmp_path / "spool"), connect_timeout_s=0.3,
                                       block_ms=100, visibility_timeout_s=0.5))
        cons = EventConsumer(bus, "llm", "w")
        seen: list[str] = []

        async def handle(ev):
            seen.append(ev.event_id)

        task = asyncio.create_task(cons.run(handle))
        prod = EventProducer(bus)
        assert await prod.publish_events([_event(i) for i in range(5)]) is False  # spooled: Redis is down
        await asyncio.sleep(0.5)
        assert not task.done()
        r = await asyncio.get_running_loop().run_in_executor(None, lambda: RedisProcess(port=port).start())
        try:
            assert await prod.flush(timeout=10)
            deadline = time.time() + 10
            while cons.handled < 5:
                assert time.time() < deadline
                await asyncio.sleep(0.02)
            cons.stop()
            await task
            assert seen == [f"ev-{i:06d}" for i in range(5)]
            await prod.close()
            await bus.close()
        finally:
            r.kill()

    asyncio.run(main())
