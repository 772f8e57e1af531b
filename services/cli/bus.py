"""`wakeline bus ...`: benchmark the bus, show stream statistics."""

from __future__ import annotations

import json


def _bench(args) -> int:
    from services.bus.bench import main

    consumers = [int(c) for c in args.consumers.split(",") if c]
    result = main(args.url, args.events, consumers, args.rate, args.paced_events, args.out)
    return 0 if all(r["handled"] == r["events"] and r["pending_after"] == 0 for r in result["runs"]) else 1


def _stats(args) -> int:
    import asyncio

    from services.bus.core import open_bus
    from services.settings import BusSettings

    s = BusSettings()
    if args.url:
        s.url = args.url
    if args.namespace:
        s.namespace = args.namespace
    if s.url is None:
        print("wakeline bus stats: no Redis URL (--url or WAKELINE_BUS_URL); not starting an embedded one")
        return 2

    async def run() -> dict:
        bus = await open_bus(s.to_config())
        try:
            if not await bus.ping():
                raise SystemExit(f"wakeline bus stats: Redis at {bus.url} is not reachable")
            return await bus.stats()
        finally:
            await bus.close()

    out = asyncio.run(run())
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"redis: {out['url']}")
    for key, info in out["streams"].items():
        groups = ", ".join(f"{g}: {v['pending']} pending / {v['consumers']} consumers"
                           for g, v in info.get("groups", {}).items())
        print(f"{key:48s} {info['length']:>10d} entries  {groups}")
    return 0


def _redrive(args) -> int:
    import asyncio

    from services.bus.core import open_bus
    from services.settings import BusSettings

    s = BusSettings()
    s.url = args.url or s.url
    s.namespace = args.namespace or s.namespace
    if s.url is None:
        print("wakeline bus redrive: no Redis URL (--url or WAKELINE_BUS_URL)")
        return 2

    async def run() -> int:
        bus = await open_bus(s.to_config())
        try:
            return await bus.redrive(args.count, args.group)
        finally:
            await bus.close()

    print(f"moved {asyncio.run(run())} dead letters back to their streams")
    return 0


def register(sub) -> None:
    """`wakeline bus bench|stats`."""
    from services.cli.common import add_command, add_group

    g = add_group(sub, "bus", "The Redis Streams bus between edge nodes and LLM workers")
    p = add_command(g, "bench", "Events/s and enqueue-to-handled latency through a local Redis it starts itself",
                    _bench)
    p.add_argument("--url", default=None, help="benchmark this Redis instead of an embedded one (uses its own keys)")
    p.add_argument("--events", type=int, default=50_000, help="events per throughput run")
    p.add_argument("--consumers", default="1,4", help="comma-separated consumer-process counts")
    p.add_argument("--rate", type=float, default=1000.0, help="events/s of the paced latency run")
    p.add_argument("--paced-events", type=int, default=5000, help="events per paced run")
    p.add_argument("--out", default="runs/bus/bench.json", help="JSON result file")
    p = add_command(g, "stats", "Stream lengths, consumer groups with pending counts, dead letters", _stats)
    p.add_argument("--url", default=None, help="Redis URL (default: WAKELINE_BUS_URL)")
    p.add_argument("--namespace", default=None, help="key namespace (default: WAKELINE_BUS_NAMESPACE or wakeline)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add_command(g, "redrive", "Move dead letters back to their streams (after fixing the cause)", _redrive)
    p.add_argument("--url", default=None, help="Redis URL (default: WAKELINE_BUS_URL)")
    p.add_argument("--namespace", default=None, help="key namespace (default: WAKELINE_BUS_NAMESPACE or wakeline)")
    p.add_argument("--count", type=int, default=100, help="at most this many")
    p.add_argument("--group", default=None, help="only dead letters of this consumer group")
