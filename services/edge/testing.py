"""Helpers to run real edge nodes in other processes (tests, bench/edge_load.py) and make speech.

`EdgeProcess` starts `wakeline edge serve` as a subprocess on free ports and waits for gRPC
health to report SERVING; `speak()` synthesizes keyword speech with eSpeak NG.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import numpy as np

from services.testing import REPO, ServiceProcess, free_port, health_status

__all__ = ["REPO", "EdgeProcess", "free_port", "health_status", "speak", "utterance_track"]


class EdgeProcess(ServiceProcess):
    """`wakeline edge serve` in a subprocess on 127.0.0.1, with its own spool dir and log file.

    Args:
        model_dir: the spotter model directory.
        bus_url: Redis URL (None: the node starts its embedded Redis).
        env: extra WAKELINE_EDGE_* (or other) environment variables.
    """

    def __init__(self, model_dir, bus_url: str | None, node_id: str = "edge-test", env: dict | None = None,
                 workdir: str | None = None) -> None:
        super().__init__("edge", ["edge", "serve"], env, workdir)
        self.model_dir = str(model_dir)
        self.bus_url = bus_url
        self.node_id = node_id
        self.port = free_port()
        self.metrics_port = free_port()
        self.root_cert: bytes | None = None
        self.processes = int(self.env.get("WAKELINE_EDGE_PROCESSES", 1))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def environ(self) -> dict[str, str]:
        env = super().environ()
        env.update({"WAKELINE_EDGE_HOST": "127.0.0.1", "WAKELINE_EDGE_PORT": str(self.port),
                    "WAKELINE_EDGE_METRICS_PORT": str(self.metrics_port), "WAKELINE_EDGE_MODEL_DIR": self.model_dir,
                    "WAKELINE_EDGE_NODE_ID": self.node_id, "WAKELINE_EDGE_SPOOL_DIR": str(self.dir / "spool"),
                    "WAKELINE_EDGE_BUS_DATA_DIR": str(self.dir / "redis")})
        if self.bus_url:
            env["WAKELINE_EDGE_BUS_URL"] = self.bus_url
        else:
            env.pop("WAKELINE_EDGE_BUS_URL", None)
        return env

    def _serving(self) -> bool:
        # health answers as soon as the first of several processes binds: wait for each one's log line
        return (health_status(self.target, timeout=0.5, root_cert=self.root_cert) == "SERVING"
                and self.log_tail(1 << 20).count("edge node serving") >= self.processes)

    def start(self, timeout: float = 60.0, attempts: int = 3) -> EdgeProcess:  # type: ignore[override]
        """Start the node and wait until health says SERVING (raises with the log tail otherwise).

        A free port can be taken by another process between picking and binding it (many test
        suites share the machine): such a start is retried on fresh ports.
        """
        for attempt in range(attempts):
            try:
                super().start(ready=self._serving, timeout=timeout)
                return self
            except RuntimeError as e:
                if attempt == attempts - 1 or "in use" not in str(e) and "cannot bind" not in str(e):
                    raise
                self.port, self.metrics_port = free_port(), free_port()
        raise AssertionError("unreachable")


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
