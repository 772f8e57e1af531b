"""`wakeline up`: start Redis, the LLM service, a worker and an edge node; Ctrl-C stops them all."""

from __future__ import annotations

import sys

from services.shipped import KWS_MODEL, LLM_MODEL


def _up(args) -> int:
    import asyncio
    from pathlib import Path

    from services.stack.stack import StackConfig, StackError, run_stack

    cfg = StackConfig(llm_model=Path(args.llm_model), kws_model=Path(args.kws_model), redis_url=args.redis_url,
                      data_dir=Path(args.data_dir), host=args.host, edge_port=args.edge_port,
                      llm_port=args.llm_port, llm_metrics_port=args.llm_metrics_port,
                      edge_metrics_port=args.edge_metrics_port or None, device=args.device,
                      node_id=args.node_id, worker_backend=args.worker_backend,
                      templates=Path(args.templates) if args.templates else None,
                      start_timeout_s=args.start_timeout)
    try:
        return asyncio.run(run_stack(cfg))
    except StackError as e:
        print(f"wakeline up: {e}", file=sys.stderr)
        return 2


def register(sub) -> None:
    from services.cli.common import add_command

    p = add_command(sub, "up", "Start the whole stack (Redis, LLM service, worker, edge node); Ctrl-C stops it", _up)
    p.add_argument("--llm-model", default=str(LLM_MODEL), help="Hugging Face folder served by the LLM service")
    p.add_argument("--kws-model", default=str(KWS_MODEL), help="keyword-spotting model folder")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of an embedded one")
    p.add_argument("--data-dir", default=".wakeline/stack", help="embedded Redis data and spool")
    p.add_argument("--host", default="127.0.0.1", help="address the services bind to")
    p.add_argument("--edge-port", type=int, default=50051)
    p.add_argument("--llm-port", type=int, default=50061)
    p.add_argument("--llm-metrics-port", type=int, default=9465, help="0 = off")
    p.add_argument("--edge-metrics-port", type=int, default=9464, help="0 = off")
    p.add_argument("--device", default="cpu", help="LLM device: cpu or cuda")
    p.add_argument("--node-id", default="edge-local", help="the edge node's id on the bus")
    p.add_argument("--worker-backend", choices=["grpc", "local"], default="grpc",
                   help="worker calls the LLM service (grpc) or loads its own engine (local)")
    p.add_argument("--templates", default=None, help="YAML/JSON prompt templates per keyword")
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for each part")
