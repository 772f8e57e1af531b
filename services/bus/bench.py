"""Bus benchmark: events/s and enqueue-to-handled latency through a real Redis.

Used by `wakeline bus bench` and `bench/bus.py`. The producer (an `EventProducer`, concurrent
`publish_event` calls as an edge node makes them) runs in this process; each consumer is its
own process (`EventConsumer`, acks + done-marks via the Lua commit), as workers would be.
Latency is publish call -> handler entry, measured on one machine's wall clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from wakeline.v1 import bus_pb2

from services.bus.consumer import EventConsumer
from services.bus.core import BusConfig, embedded_redis, open_bus
from services.bus.producer import EventProducer

_T_ATTR = "bench_t_ns"


def make_event(i: int, node: str = "edge-bench") -> bus_pb2.KeywordEvent:
    """A KeywordEvent sized like a real detection (~210 bytes serialized, random 128-bit id)."""
    now = time.time()
    return bus_pb2.KeywordEvent(
        event_id=os.urandom(16).hex(), trace_id=os.urandom(8).hex(), device_id=f"dev-{i % 97:04d}",
        edge_node=node, keyword="turn on the kitchen lights", score=0.87, start_time=12.48, end_time=13.32,
        fired_time=13.40, created_unix_ms=int(now * 1000),
        attributes={"room": "kitchen", "locale": "en-US", _T_ATTR: str(time.time_ns())})


def _consumer_main() -> None:
    """Entry of one consumer process: argv = url namespace name out_file."""
    url, ns, name, out = sys.argv[1:5]

    async def main() -> None:
        bus = await open_bus(BusConfig(url=url, namespace=ns, spool_dir=tempfile.mkdtemp()))
        cons = EventConsumer(bus, "bench", name)
        lat: list[int] = []

        async def handle(ev):
            lat.append(time.time_ns() - int(ev.attributes[_T_ATTR]))

        async def watch_stop():
            while not await bus.redis.exists(f"{ns}:bench-stop"):
                await asyncio.sleep(0.1)
            cons.stop()

        watcher = asyncio.create_task(watch_stop())
        await bus.redis.set(f"{ns}:ready:{name}", 1)
        cpu0 = time.process_time()
        await cons.run(handle)
        cpu = time.process_time() - cpu0
        watcher.cancel()
        np.save(out, np.asarray(lat, dtype=np.int64))
        Path(out + ".cpu").write_text(str(cpu))
        await bus.close()

    asyncio.run(main())


async def _run_one(url: str, consumers: int, events: int, rate: float | None, workdir: Path) -> dict:
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                      os.environ.get("PYTHONPATH", "")]))
    outs = [workdir / f"{ns}-c{i}.npy" for i in range(consumers)]
    procs = [subprocess.Popen([sys.executable, "-c", "from services.bus.bench import _consumer_main; _consumer_main()",
                               url, ns, f"c{i}", str(outs[i])], env=env) for i in range(consumers)]
    bus = await open_bus(BusConfig(url=url, namespace=ns, spool_dir=str(workdir / ns)))
    try:
        while sum([await bus.redis.exists(f"{ns}:ready:c{i}") for i in range(consumers)]) < consumers:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # consumers are now blocked in XREADGROUP
        prod = EventProducer(bus)
        done_key = bus.keys.done("bench")
        redis_cpu0 = await _redis_cpu(bus)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if rate:
            tasks = []
            for i in range(events):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(prod.publish_event(make_event(i))))
            await asyncio.gather(*tasks)
        else:
            chunk = 2000
            for s in range(0, events, chunk):
                await asyncio.gather(*[prod.publish_event(make_event(i)) for i in range(s, min(events, s + chunk))])
        t_pub = time.perf_counter() - t0
        prod_cpu = time.process_time() - cpu0
        while await bus.redis.zcard(done_key) < events:
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - t0
        redis_cpu = await _redis_cpu(bus) - redis_cpu0
        await bus.redis.set(f"{ns}:bench-stop", 1)
        for p in procs:
            p.wait(timeout=60)
        await prod.close()
        pending = (await bus.redis.xpending(bus.keys.events, "bench"))["pending"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        await bus.close()
    lat = np.concatenate([np.load(o) for o in outs]) / 1e6
    cons_cpu = sum(float(Path(str(o) + ".cpu").read_text()) for o in outs)
    return {
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "mode": "paced" if rate else "throughput", "consumers": consumers, "events": events,
        "target_rate": rate, "handled": int(lat.size), "pending_after": int(pending),
        "publish_s": round(t_pub, 3), "elapsed_s": round(elapsed, 3),
        "events_per_s": round(events / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "max_ms": round(float(lat.max()), 3),
        # CPU per event, robust to other load on the machine; includes idle-loop polling of consumers.
        "cpu_us_per_event": {"producer": round(prod_cpu / events * 1e6, 1),
                             "consumers": round(cons_cpu / events * 1e6, 1),
                             "redis": round(redis_cpu / events * 1e6, 1)},
    }


async def _redis_cpu(bus) -> float:
    info = await bus.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run_bench(url: str | None = None, events: int = 50_000, consumers=(1, 4), rate: float = 1000.0,
                    paced_events: int = 5000, workdir: str | None = None) -> dict:
    """Throughput (as fast as possible) and paced runs for each consumer count; returns a JSON-able dict."""
    work = Path(workdir or tempfile.mkdtemp(prefix="wl-busbench-"))
    work.mkdir(parents=True, exist_ok=True)
    stop = None
    if url is None:
        url, stop = embedded_redis(work / "redis")
    try:
        runs = []
        for c in consumers:
            runs.append(await _run_one(url, c, events, None, work))
            runs.append(await _run_one(url, c, paced_events, rate, work))
        bus = await open_bus(BusConfig(url=url))
        info = await bus.redis.info("server")
        await bus.close()
    finally:
        if stop:
            stop()
    return {"redis_version": info.get("redis_version"), "url_kind": url.split(":", 1)[0],
            "cpus": os.cpu_count(), "python": sys.version.split()[0], "runs": runs}


def format_table(result: dict) -> str:
    """The runs as a markdown table."""
    lines = ["| mode | consumers | events | events/s | p50 ms | p99 ms | max ms | CPU µs/event (prod+cons+redis) "
             "| load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in result["runs"]:
        c = r["cpu_us_per_event"]
        mode = f"paced {r['target_rate']:.0f}/s" if r["mode"] == "paced" else "throughput"
        lines.append(f"| {mode} | {r['consumers']} | {r['events']} | {r['events_per_s']:,.0f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} | "
                     f"{c['producer']:.0f}+{c['consumers']:.0f}+{c['redis']:.0f} | {r['loadavg_1m']:.1f} |")
    return "\n".join(lines)


def main(url: str | None, events: int, consumers, rate: float, paced_events: int, out: str | None) -> dict:
    """Run, print the table, write JSON to `out` when given."""
    result = asyncio.run(run_bench(url, events, tuple(consumers), rate, paced_events))
    print(format_table(result))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return result
