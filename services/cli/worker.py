"""`wakeline worker run`: the keyword-event worker (env WAKELINE_WORKER_*)."""

from __future__ import annotations

import sys


def _run(args) -> int:
    import asyncio
    import signal

    from services.worker.settings import WorkerSettings
    from services.worker.worker import run_worker

    over = {k: v for k, v in {
        "bus_url": args.bus_url, "group": args.group, "consumer": args.consumer, "concurrency": args.concurrency,
        "backend": args.backend, "llm_target": args.llm_target, "model": args.model, "device": args.device,
        "templates": args.templates, "max_tokens": args.max_tokens,
    }.items() if v is not None}
    try:
        settings = WorkerSettings(**over)
    except ValueError as e:
        print(f"wakeline worker run: {e}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop, ready=lambda: print("worker running", flush=True))

    try:
        asyncio.run(main())
    except (FileNotFoundError, NotImplementedError, TimeoutError) as e:
        print(f"wakeline worker run: {e}", file=sys.stderr)
        return 2
    return 0


def register(sub) -> None:
    from services.cli.common import add_command, add_group

    grp = add_group(sub, "worker", "Keyword-event workers: events from the bus -> LLM -> answers")
    p = add_command(grp, "run", "Consume KeywordEvents and publish Answers (env WAKELINE_WORKER_*)", _run)
    p.add_argument("--bus-url", default=None, help="redis:// or unix:// URL (default: embedded Redis)")
    p.add_argument("--group", default=None, help="consumer group shared by the workers (default llm-workers)")
    p.add_argument("--consumer", default=None, help="this worker's name in the group (default host-pid)")
    p.add_argument("--concurrency", type=int, default=None, help="events in flight (default 8)")
    p.add_argument("--backend", choices=["local", "grpc"], default=None, help="engine in process or LLM service")
    p.add_argument("--llm-target", default=None, help="host:port of the LLM service (grpc backend)")
    p.add_argument("--model", default=None, help="model folder (local backend)")
    p.add_argument("--device", default=None, help="cpu or cuda (local backend)")
    p.add_argument("--templates", default=None, help="YAML/JSON prompt templates per keyword")
    p.add_argument("--max-tokens", type=int, default=None)
