"""Scoring backends: the shipped Spotter (any exported model dir) or the PocketSphinx baseline.

A backend has ``score_pair(samples, sample_rate, text) -> float``,
``detect(samples, sample_rate, keywords, threshold, chunk_seconds) -> [{"keyword", "time", "score"}]``,
``enroll_seconds(text)`` and ``info()``. ``load_backend("pocketsphinx")`` gives the baseline; any
other value is a model folder loaded with ``edge.spotter.Spotter.from_dir`` and used exactly as
the edge service uses it (docs/architecture.md): text enrollment through ``create_stream``,
audio through ``accept_waveform`` in chunks of at most 100 ms, ``decode`` while ``is_ready``.
"""

from __future__ import annotations

import time

import numpy as np

MAX_CHUNK_SECONDS = 0.1


class SpotterBackend:
    """``edge.spotter.Spotter`` behind the backend interface."""

    def __init__(self, model_dir: str, num_threads: int = 1):
        try:
            from edge.spotter import Spotter
        except ImportError as e:
            raise RuntimeError(f"edge.spotter is not available ({e}); use --model pocketsphinx") from e
        self.model_dir = model_dir
        self.name = f"spotter:{model_dir}"
        # keywords enrolled without a threshold get the per-keyword calibrated one, as the edge
        # service's default `threshold_mode` ("auto", the contract of edge.proto) gives them
        self.spotter = Spotter.from_dir(model_dir, num_threads=num_threads, threshold_mode="auto")

    def score_pair(self, samples: np.ndarray, sample_rate: int, text: str) -> float:
        return float(self.spotter.score_pair(samples, sample_rate, text))

    def detect(self, samples: np.ndarray, sample_rate: int, keywords: list[str],
               threshold: float | None = None, chunk_seconds: float = MAX_CHUNK_SECONDS,
               timings: list[float] | None = None) -> list[dict]:
        """Stream ``samples``; ``time`` is the audio time fed when the detection came out.

        ``timings``, if given, receives the wall time spent on each chunk (for ``bench``).
        """
        chunk_seconds = min(chunk_seconds, MAX_CHUNK_SECONDS)
        spec = [(k, threshold) if threshold is not None else k for k in keywords]
        stream = self.spotter.create_stream(spec)
        step = max(1, int(round(chunk_seconds * sample_rate)))
        out = []
        for i in range(0, len(samples), step):
            chunk = np.ascontiguousarray(samples[i:i + step], dtype=np.float32)
            t0 = time.perf_counter()
            stream.accept_waveform(sample_rate, chunk)
            while self.spotter.is_ready(stream):
                self.spotter.decode(stream)
            if timings is not None:
                timings.append(time.perf_counter() - t0)
            fed = min(i + step, len(samples)) / sample_rate
            for det in stream.results():
                fired = getattr(det, "fired_time", None)
                t = fed if fired is None else min(float(fired), fed)  # never later than what was fed
                out.append({"keyword": det.keyword, "time": round(t, 3), "score": round(float(det.score), 5)})
        return out

    def enroll_seconds(self, text: str) -> float:
        """A full enrollment (G2P, lookup, threshold calibration), never a cache hit."""
        t0 = time.perf_counter()
        self.spotter.enroll(text, use_cache=False)
        return time.perf_counter() - t0

    def info(self) -> dict:
        """Model bytes (all .onnx files) and parameters (ONNX initializers), when known."""
        from pathlib import Path

        files = list(Path(self.model_dir).glob("*.onnx"))
        size = sum(f.stat().st_size for f in files)
        params = None
        try:
            import onnx

            params = 0
            for f in files:
                m = onnx.load(str(f), load_external_data=False)
                params += sum(int(np.prod(t.dims)) for t in m.graph.initializer)
        except Exception:  # onnx is a training extra; the size alone still says a lot
            params = getattr(self.spotter, "num_parameters", None)
        return {"name": self.name, "model_bytes": size, "parameters": params}


def load_backend(model: str, num_threads: int = 1):
    """``"pocketsphinx"`` -> the baseline; anything else -> a Spotter model folder."""
    if model == "pocketsphinx":
        from kws.baseline.pocketsphinx import PocketSphinxBackend

        return PocketSphinxBackend()
    from pathlib import Path

    if not Path(model).is_dir():
        raise FileNotFoundError(f"model folder {model!r} does not exist (or use --model pocketsphinx)")
    return SpotterBackend(model, num_threads=num_threads)
