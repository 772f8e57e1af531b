"""`wakeline up`: Redis, the LLM service, a worker and an edge node, supervised as one stack.

Each part runs as its own process (`wakeline llm serve`, `wakeline worker run`, `wakeline edge
serve`), configured through its WAKELINE_<SERVICE>_* environment, exactly as it would run in a
container. The stack starts them in dependency order, waits for gRPC health (LLM, edge) or the
worker's ready line, prints the addresses, and on SIGINT/SIGTERM stops them in reverse order
(SIGTERM, a grace period, then SIGKILL), then the embedded Redis. If any part dies, the stack
stops the others and exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.shipped import KWS_MODEL, LLM_MODEL

log = logging.getLogger("wakeline.stack")


class StackError(RuntimeError):
    """The stack cannot start (missing model, a part that died or never became healthy)."""


@dataclass
class StackConfig:
    """What `wakeline up` starts; ports of 0 are not allowed (the parts must know each other's address)."""

    llm_model: Path = LLM_MODEL
    kws_model: Path = KWS_MODEL
    redis_url: str | None = None  # None: an embedded Redis in data_dir/redis
    data_dir: Path = Path(".wakeline/stack")
    host: str = "127.0.0.1"
    edge_port: int = 50051
    llm_port: int = 50061
    edge_metrics_port: int | None = None
    llm_metrics_port: int = 0
    device: str = "cpu"
    node_id: str = "edge-local"
    worker_backend: str = "grpc"
    templates: Path | None = None
    start_timeout_s: float = 600.0
    grace_s: float = 10.0
    extra_env: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Fail early with a clear message when a shipped model is missing or two parts share a port."""
        ports = {"edge": self.edge_port, "llm": self.llm_port, "edge metrics": self.edge_metrics_port,
                 "llm metrics": self.llm_metrics_port}
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port and port in seen:
                raise StackError(f"the {seen[port]} and {name} ports are both {port}: give each part its own port")
            if port:
                seen[port] = name
        if not (Path(self.llm_model) / "config.json").is_file():
            raise StackError(f"no LLM at {self.llm_model}: the default model (models/llm/dense) is not shipped "
                             "in this checkout yet; pass --llm-model DIR (a Hugging Face folder)")
        kws = Path(self.kws_model)
        if not kws.is_dir() or not any(kws.glob("*.onnx")):
            raise StackError(f"no keyword-spotting model at {kws}: the default model (models/kws/default) is not "
                             "shipped in this checkout yet; pass --kws-model DIR (a folder of .onnx files)")


@dataclass
class Part:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None


class Stack:
    """Start with `await start()`, stop with `await stop()`; `addresses` lists what listens where."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.parts: list[Part] = []
        self.redis_url: str | None = cfg.redis_url
        self._stop_redis = None

    @property
    def addresses(self) -> dict[str, str]:
        c = self.cfg
        out = {"redis": self.redis_url or "", "llm": f"{c.host}:{c.llm_port}", "edge": f"{c.host}:{c.edge_port}"}
        if c.llm_metrics_port:
            out["llm metrics"] = f"http://{c.host}:{c.llm_metrics_port}/metrics"
        if c.edge_metrics_port:
            out["edge metrics"] = f"http://{c.host}:{c.edge_metrics_port}/metrics"
        return out

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Part:
        full_env = {**os.environ, **env, **self.cfg.extra_env}
        argv = [sys.executable, "-m", "services.cli", *args]
        # stdout is ours to watch for ready lines; logs go to the inherited stderr
        proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE, text=True, start_new_session=True)
        part = Part(name, argv, env, proc)
        self.parts.append(part)
        log.info("started %s", name, extra={"pid": proc.pid})
        return part

    async def _wait_health(self, part: Part, target: str, service: str) -> None:
        import grpc

        from services.llm.client import wait_serving

        end = time.monotonic() + self.cfg.start_timeout_s
        async with grpc.aio.insecure_channel(target) as ch:
            while True:
                if part.proc.poll() is not None:
                    raise StackError(f"{part.name} exited with code {part.proc.returncode} while starting")
                try:
                    await wait_serving(ch, service, timeout=1.0)
                    return
                except TimeoutError:
                    if time.monotonic() > end:
                        raise StackError(f"{part.name} not healthy after {self.cfg.start_timeout_s:.0f}s") from None

    async def _wait_line(self, part: Part, needle: str) -> None:
        def read() -> bool:
            for line in part.proc.stdout:
                sys.stdout.write(f"[{part.name}] {line}")
                if needle in line:
                    return True
            return False

        try:
            ok = await asyncio.wait_for(asyncio.to_thread(read), self.cfg.start_timeout_s)
        except asyncio.TimeoutError:
            raise StackError(f"{part.name} not ready after {self.cfg.start_timeout_s:.0f}s") from None
        if not ok:
            raise StackError(f"{part.name} exited with code {part.proc.wait()} while starting")

    async def start(self) -> None:
        """Start Redis, LLM, worker, edge; return once all are healthy (or raise StackError)."""
        c = self.cfg
        c.check()
        data = Path(c.data_dir).resolve()
        data.mkdir(parents=True, exist_ok=True)
        try:
            if self.redis_url is None:
                from services.bus import embedded_redis

                self.redis_url, self._stop_redis = embedded_redis(data / "redis")
            llm = self._spawn("llm", ["llm", "serve"], {
                "WAKELINE_LLM_MODEL": str(c.llm_model), "WAKELINE_LLM_HOST": c.host,
                "WAKELINE_LLM_PORT": str(c.llm_port), "WAKELINE_LLM_DEVICE": c.device,
                "WAKELINE_LLM_METRICS_PORT": str(c.llm_metrics_port)})
            await self._wait_health(llm, f"{c.host}:{c.llm_port}", "wakeline.v1.LlmService")
            worker_env = {"WAKELINE_WORKER_BUS_URL": self.redis_url, "WAKELINE_WORKER_BACKEND": c.worker_backend,
                          "WAKELINE_WORKER_LLM_TARGET": f"{c.host}:{c.llm_port}",
                          "WAKELINE_WORKER_MODEL": str(c.llm_model), "WAKELINE_WORKER_DEVICE": c.device}
            if c.templates:
                worker_env["WAKELINE_WORKER_TEMPLATES"] = str(c.templates)
            worker = self._spawn("worker", ["worker", "run"], worker_env)
            await self._wait_line(worker, "worker running")
            edge_env = {"WAKELINE_EDGE_BUS_URL": self.redis_url, "WAKELINE_EDGE_HOST": c.host,
                        "WAKELINE_EDGE_PORT": str(c.edge_port), "WAKELINE_EDGE_MODEL_DIR": str(c.kws_model),
                        "WAKELINE_EDGE_NODE_ID": c.node_id, "WAKELINE_EDGE_SPOOL_DIR": str(data / "spool")}
            args = ["edge", "serve"]
            if c.edge_metrics_port:
                edge_env["WAKELINE_EDGE_METRICS_PORT"] = str(c.edge_metrics_port)
            else:
                args.append("--no-metrics")
            edge = self._spawn("edge", args, edge_env)
            await self._wait_health(edge, f"{c.host}:{c.edge_port}", "wakeline.v1.EdgeService")
        except BaseException:
            await self.stop()
            raise

    def dead(self) -> Part | None:
        """A part that exited on its own, if any."""
        return next((p for p in self.parts if p.proc and p.proc.poll() is not None), None)

    async def stop(self) -> None:
        """SIGTERM the parts in reverse order, SIGKILL after the grace period, then stop Redis."""
        for part in reversed(self.parts):
            p = part.proc
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(p.wait, self.cfg.grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", part.name, self.cfg.grace_s)
                p.kill()
                await asyncio.to_thread(p.wait)
        self.parts.clear()
        if self._stop_redis is not None:
            self._stop_redis()
            self._stop_redis = None


async def run_stack(cfg: StackConfig) -> int:
    """`wakeline up`: start, print the addresses, supervise until a signal or a dead part."""
    stack = Stack(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(stack.start())
    await asyncio.wait({starting, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await stack.stop()
        return 130
    starting.result()
    print("wakeline stack is up:", flush=True)
    for name, addr in stack.addresses.items():
        print(f"  {name:<13} {addr}", flush=True)
    print("Ctrl-C stops it.", flush=True)
    rc = 0
    while not stop.is_set():
        dead = stack.dead()
        if dead is not None:
            print(f"{dead.name} exited with code {dead.proc.returncode}; stopping the stack", file=sys.stderr)
            rc = 1
            break
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    await stack.stop()
    print("wakeline stack stopped", flush=True)
    return rc
