"""Log-mel front end shared by training (kws imports it) and serving (the Spotter).

numpy only. Frames are not centred: frame k covers samples [k * hop, k * hop + win), so a
streaming extractor that carries the unconsumed tail of each chunk produces exactly the frames
of one batch call over the concatenated audio (a test checks this bit for bit, up to float
rounding). Other sample rates (8-48 kHz) are converted to 16 kHz with soxr.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SAMPLE_RATE = 16000
MIN_RATE, MAX_RATE = 8000, 48000


@dataclass(frozen=True)
class FeatureConfig:
    """Front-end parameters; written into the ONNX metadata so serving can check them."""

    sample_rate: int = SAMPLE_RATE
    win: int = 400  # 25 ms
    hop: int = 160  # 10 ms
    n_fft: int = 512
    n_mels: int = 40
    fmin: float = 20.0
    fmax: float = 7600.0
    log_floor: float = 1e-6

    def to_dict(self) -> dict:
        """Plain dict (for JSON metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        """Inverse of `to_dict`, ignoring unknown keys."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """HTK-style triangular filters, [n_fft // 2 + 1, n_mels] float32."""
    n_bins = cfg.n_fft // 2 + 1
    freqs = np.linspace(0.0, cfg.sample_rate / 2.0, n_bins)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lo[None]) / (mid - lo)[None]
    down = (hi[None] - freqs[:, None]) / (hi - mid)[None]
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


class LogMel:
    """Batch log-mel: `LogMel(cfg)(samples) -> [frames, n_mels]` float32 (16 kHz input)."""

    def __init__(self, cfg: FeatureConfig | None = None):
        self.cfg = cfg or FeatureConfig()
        self.window = np.hanning(self.cfg.win + 1)[:-1].astype(np.float32)  # periodic Hann
        self.fbank = mel_filterbank(self.cfg)

    def num_frames(self, n_samples: int) -> int:
        """Frames a clip of `n_samples` yields."""
        c = self.cfg
        return 0 if n_samples < c.win else 1 + (n_samples - c.win) // c.hop

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        c = self.cfg
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = self.num_frames(len(x))
        if n == 0:
            return np.zeros((0, c.n_mels), np.float32)
        idx = np.arange(c.win)[None, :] + c.hop * np.arange(n)[:, None]
        frames = x[idx] * self.window
        spec = np.fft.rfft(frames, n=c.n_fft, axis=-1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        return np.log(power @ self.fbank + c.log_floor).astype(np.float32)


class StreamingLogMel:
    """Streaming log-mel: feed chunks of any length, get the frames that became complete."""

    def __init__(self, cfg: FeatureConfig | None = None):
        self.logmel = LogMel(cfg)
        self.cfg = self.logmel.cfg
        self._tail = np.zeros(0, np.float32)

    def reset(self) -> None:
        """Forget buffered samples."""
        self._tail = np.zeros(0, np.float32)

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Append 16 kHz samples; return the new complete frames [n, n_mels]."""
        x = np.concatenate([self._tail, np.asarray(samples, np.float32).reshape(-1)])
        n = self.logmel.num_frames(len(x))
        if n == 0:
            self._tail = x
            return np.zeros((0, self.cfg.n_mels), np.float32)
        feats = self.logmel(x[: (n - 1) * self.cfg.hop + self.cfg.win])
        self._tail = x[n * self.cfg.hop :]
        return feats


def check_rate(sample_rate: int) -> None:
    """Raise ValueError unless 8 kHz <= rate <= 48 kHz."""
    if not isinstance(sample_rate, (int, np.integer)) or not MIN_RATE <= int(sample_rate) <= MAX_RATE:
        raise ValueError(f"sample rate {sample_rate!r} outside the supported {MIN_RATE}-{MAX_RATE} Hz")


def resample(samples: np.ndarray, sample_rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Whole-clip resampling to `target` Hz (soxr, high quality); float32 out."""
    x = np.asarray(samples, np.float32).reshape(-1)
    if int(sample_rate) == target:
        return x
    import soxr

    return soxr.resample(x, int(sample_rate), target, quality="HQ").astype(np.float32)


class StreamResampler:
    """Chunked resampling that carries filter state across chunks (soxr.ResampleStream)."""

    def __init__(self, sample_rate: int, target: int = SAMPLE_RATE):
        check_rate(sample_rate)
        self.sample_rate, self.target = int(sample_rate), target
        self._rs = None
        if self.sample_rate != target:
            import soxr

            self._rs = soxr.ResampleStream(self.sample_rate, target, 1, dtype="float32", quality="HQ")

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(samples, np.float32).reshape(-1)
        if self._rs is None:
            return x
        return self._rs.resample_chunk(x, last=last).astype(np.float32)


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    """[n] or [n, channels] int16/int32/float -> float32 mono in [-1, 1]."""
    x = np.asarray(samples)
    if x.ndim == 2:
        x = x.mean(axis=1) if x.dtype.kind == "f" else x.astype(np.float64).mean(axis=1).astype(x.dtype)
    if x.dtype == np.int16:
        return (x.astype(np.float32) / 32768.0).reshape(-1)
    if x.dtype == np.int32:
        return (x.astype(np.float32) / 2147483648.0).reshape(-1)
    return x.astype(np.float32).reshape(-1)
