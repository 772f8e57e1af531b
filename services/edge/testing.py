"""Helpers to run real edge nodes in other processes (tests, bench/edge_load.py) and make speech.

`EdgeProcess` starts `wakeline edge serve` as a subprocess on free ports and waits for gRPC
health to report SERVING; `speak()` synthesizes keyword speech with eSpeak NG.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class EdgeProcess:
    """`wakeline edge serve` in a subprocess on 127.0.0.1, with its own spool dir and log file.

    Args:
        model_dir: the spotter model directory.
        bus_url: Redis URL (None: the node starts its embedded Redis).
        env: extra WAKELINE_EDGE_* (or other) environment variables.
    """

    def __init__(self, model_dir, bus_url: str | None, node_id: str = "edge-test", env: dict | None = None,
                 workdir: str | None = None) -> None:
        self.model_dir = str(model_dir)
        self.bus_url = bus_url
        self.node_id = node_id
        self.port = free_port()
        self.metrics_port = free_port()
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="wl-edge-"))
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "edge.log"
        self.root_cert: bytes | None = None
        self.processes = int(self.env.get("WAKELINE_EDGE_PROCESSES", 1))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, attempts: int = 3) -> EdgeProcess:
        """Start the node and wait until health says SERVING (raises with the log tail otherwise).

        A free port can be taken by another process between picking and binding it (many test
        suites share the machine): such a start is retried on fresh ports.
        """
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except RuntimeError as e:
                if attempt == attempts - 1 or "in use" not in str(e) and "cannot bind" not in str(e):
                    raise
                self.port, self.metrics_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> EdgeProcess:
        path = os.pathsep.join(p for p in (str(REPO), str(REPO / "protos"), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path, **self.env}
        env.update({"WAKELINE_EDGE_HOST": "127.0.0.1", "WAKELINE_EDGE_PORT": str(self.port),
                    "WAKELINE_EDGE_METRICS_PORT": str(self.metrics_port), "WAKELINE_EDGE_MODEL_DIR": self.model_dir,
                    "WAKELINE_EDGE_NODE_ID": self.node_id, "WAKELINE_EDGE_SPOOL_DIR": str(self.dir / "spool"),
                    "WAKELINE_EDGE_BUS_DATA_DIR": str(self.dir / "redis")})
        if self.bus_url:
            env["WAKELINE_EDGE_BUS_URL"] = self.bus_url
        else:
            env.pop("WAKELINE_EDGE_BUS_URL", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", "edge", "serve"], cwd=REPO, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edge node exited with {self.proc.returncode}:\n{self.log_tail()}")
            if (health_status(self.target, timeout=0.5, root_cert=self.root_cert) == "SERVING"
                    and self.log_tail(1 << 20).count("edge node serving") >= self.processes):
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"edge node not SERVING after {timeout} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful drain) and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        self.kill()
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def speak(text: str, voice: str = "en-us", rate_wpm: int = 150) -> tuple[np.ndarray, int]:
    """Synthesize `text` with eSpeak NG; returns (float32 samples, sample rate)."""
    import soundfile as sf

    try:
        from kws.data.espeak import SAMPLE_RATE, synthesize  # in-process eSpeak of the kws data pipeline

        return np.asarray(synthesize(text, voice=voice, rate=rate_wpm).audio, np.float32), int(SAMPLE_RATE)
    except (ImportError, OSError, RuntimeError):  # no in-process engine here: the CLI does the same
        pass
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise RuntimeError("no eSpeak NG (apt install espeak-ng)")
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run([exe, "-v", voice, "-s", str(rate_wpm), "-w", f.name, text], check=True, capture_output=True)
        samples, rate = sf.read(f.name, dtype="float32")
    return samples, int(rate)


def utterance_track(parts: list[str | float], rate: int = 16000, voice: str = "en-us") -> tuple[np.ndarray, list]:
    """Concatenate speech (str) and silences (float seconds) at `rate`; returns (samples, [(text, start, end)])."""
    import soxr

    chunks, spans, t = [], [], 0.0
    for p in parts:
        if isinstance(p, str):
            x, r = speak(p, voice)
            x = soxr.resample(x, r, rate).astype(np.float32) if r != rate else x
            spans.append((p, t, t + x.size / rate))
        else:
            x = np.zeros(int(p * rate), np.float32)
        chunks.append(x)
        t += x.size / rate
    return np.concatenate(chunks), spans
