"""Several edge-node processes on one port: `wakeline edge serve --processes N`.

The spotter's per-frame scoring is Python that holds the GIL, so one process uses about one core
however many threads it has. N processes bind the same port with SO_REUSEPORT (the kernel spreads
connections over them); each is a full node with its own node id `<node_id>-<i>` (answers come
back to the process that owns the device's stream), spool dir and metrics port. They share one
bus: without a URL, the supervisor starts the embedded Redis once and hands its URL down.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from services.edge.settings import EdgeSettings

log = logging.getLogger(__name__)


def child_env(settings: EdgeSettings, i: int, bus_url: str | None) -> dict[str, str]:
    """The environment of worker process `i`: every setting as WAKELINE_EDGE_*, then its own fields."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        key = f"WAKELINE_EDGE_{name.upper()}"
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    env.update({"WAKELINE_EDGE_PROCESSES": "1", "WAKELINE_EDGE_REUSE_PORT": "true",
                "WAKELINE_EDGE_NODE_ID": f"{settings.node_id}-{i}",
                "WAKELINE_EDGE_SPOOL_DIR": str(settings.spool_dir / str(i))})
    if bus_url is not None:
        env["WAKELINE_EDGE_BUS_URL"] = bus_url
    if settings.metrics_port is not None:
        env["WAKELINE_EDGE_METRICS_PORT"] = str(settings.metrics_port + i)
    return env


def serve_processes(settings: EdgeSettings) -> int:
    """Run `settings.processes` node processes until SIGTERM/SIGINT (forwarded) or one of them dies."""
    if settings.port == 0:
        raise ValueError("--processes > 1 needs a fixed --port (the processes share it)")
    from services.edge.app import bus_config

    cfg = bus_config(settings)
    stop_redis = None
    bus_url = cfg.url
    if bus_url is None:
        from services.bus.core import embedded_redis

        bus_url, stop_redis = embedded_redis(cfg.data_dir)
    procs = [subprocess.Popen([sys.executable, "-m", "services.cli", "edge", "serve"], env=child_env(settings, i, bus_url))
             for i in range(settings.processes)]
    log.info("edge processes started", extra={"processes": len(procs), "port": settings.port,
                                              "pids": ",".join(str(p.pid) for p in procs)})
    stopping = False

    def forward(signum, frame):
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    rc = 0
    try:
        while any(p.poll() is None for p in procs):
            dead = [p for p in procs if p.poll() is not None]
            if dead and not stopping:
                # A node process died: stop the rest so the orchestrator restarts the whole node.
                rc = dead[0].returncode or 1
                log.error("edge process exited; stopping the others", extra={"pid": dead[0].pid, "rc": rc})
                forward(signal.SIGTERM, None)
            time.sleep(0.2)
        for p in procs:
            if p.returncode:
                rc = rc or p.returncode
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if stop_redis is not None:
            stop_redis()
    return rc
