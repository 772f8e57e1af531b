"""`wakeline edge serve`: run an edge node (gRPC EdgeService + health + reflection + metrics)."""

from __future__ import annotations

from services.cli.common import add_command, add_group

# flag -> EdgeSettings field; unset flags fall back to WAKELINE_EDGE_* and then the defaults.
_FLAGS = {
    "host": str, "port": int, "model_dir": str, "node_id": str, "bus_url": str, "spool_dir": str,
    "max_streams": int, "max_chunk_bytes": int, "max_keywords": int, "max_message_bytes": int,
    "num_threads": int, "ort_threads": int, "auth_tokens_file": str, "tls_cert": str, "tls_key": str,
    "metrics_port": int, "grace_s": float, "threshold_mode": str, "processes": int,
    "overload_lag_s": float,
}


def register(sub) -> None:
    """Add the `edge` group."""
    g = add_group(sub, "edge", "the edge node: streaming keyword spotting for devices")
    p = add_command(g, "serve", "serve EdgeService (settings: flags, else env WAKELINE_EDGE_*)", _serve)
    for name, typ in _FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None,
                       help=f"(env WAKELINE_EDGE_{name.upper()})")
    p.add_argument("--no-metrics", action="store_true", help="do not open the Prometheus port")


def _serve(args) -> int:
    import asyncio
    import logging

    from services.edge.app import EdgeNode
    from services.edge.settings import EdgeSettings

    overrides = {k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None}
    if args.no_metrics:
        overrides["metrics_port"] = None
    try:
        settings = EdgeSettings(**overrides)
        if settings.processes > 1:
            from services.edge.supervisor import serve_processes

            return serve_processes(settings)
        asyncio.run(EdgeNode(settings).run())
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # settings, model, TLS or bus set-up
        logging.getLogger("services.edge").error("edge node failed to start: %s", e)
        return 1
    return 0
