"""Run `wakeline` services in subprocesses for tests and benchmarks, and probe their gRPC health.

`ServiceProcess` is the one process helper: `services.edge.testing.EdgeProcess` (edge nodes on
free ports) builds on it, and `services.llm.testing.start_llm/start_worker` return one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from services.shipped import REPO

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 and that this process was not given before.

    The kernel may hand the same ephemeral port to two back-to-back probes; two services told to share
    one port then race for it (seen in CI: the stack's edge and LLM on one port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def health_status(target: str, service: str = "", timeout: float = 1.0, root_cert: bytes | None = None) -> str | None:
    """The gRPC health status name of `service` at `target`, or None when unreachable."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    creds = grpc.ssl_channel_credentials(root_cert) if root_cert else None
    ch = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    try:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    except grpc.RpcError:
        return None
    finally:
        ch.close()


def grpc_serving(target: str, service: str = "") -> bool:
    """True when `target`'s standard health service reports `service` SERVING."""
    return health_status(target, service) == "SERVING"


class ServiceProcess:
    """`python -m services.cli ARGS...` in a subprocess with its log in a file (tests and benchmarks).

    Args:
        name: names the log file (`<name>.log`), the temporary work dir and error messages.
        args: the `wakeline` subcommand and its arguments, e.g. ["llm", "serve"].
        env: extra environment variables (on top of this process's, with PYTHONPATH set to the repo).
        workdir: where the log goes (a fresh temporary dir when None; `cleanup()` removes it).
    """

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None,
                 workdir: str | Path | None = None) -> None:
        self.name, self.args = name, list(args)
        self.env = dict(env or {})
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"wl-{name}-"))
        self.log_path = self.dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def environ(self) -> dict[str, str]:
        """The child's environment (subclasses add their service's settings)."""
        path = os.pathsep.join(p for p in (str(REPO), str(REPO / "protos"), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONPATH": path, **self.env}

    def start(self, ready: Callable[[], bool] | None = None, ready_line: str | None = None,
              timeout: float = 120.0) -> ServiceProcess:
        """Start it and wait until `ready()` is true (e.g. gRPC health SERVING) or the log shows `ready_line`.

        Raises RuntimeError with the log tail when it exits first or is not ready within `timeout` s.
        """
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", "services.cli", *self.args], cwd=REPO,
                                     env=self.environ(), stdout=self._log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if (ready is not None and ready()) or (ready_line and ready_line in self.log_tail(100_000)):
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful drain) and wait (SIGKILL after `timeout`); returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def cleanup(self) -> None:
        """Kill it, close its log and remove its work dir."""
        self.kill()
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
