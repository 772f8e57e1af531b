"""Decoding and validation of device audio: PCM16/float32, interleaved channels, 8-48 kHz.

Every problem raises `AudioError` with a message meant for the device's developer; the server
turns it into `INVALID_ARGUMENT`. Audio is averaged to mono and resampled (soxr, streaming, so
chunk boundaries leave no clicks) to the model's rate.
"""

from __future__ import annotations

import numpy as np
from wakeline.v1 import audio_pb2

MIN_RATE, MAX_RATE = 8000, 48000
MAX_CHANNELS = 8

_BYTES = {audio_pb2.AUDIO_ENCODING_PCM16: 2, audio_pb2.AUDIO_ENCODING_FLOAT32: 4}
_NAMES = {audio_pb2.AUDIO_ENCODING_PCM16: "PCM16", audio_pb2.AUDIO_ENCODING_FLOAT32: "FLOAT32"}


class AudioError(ValueError):
    """Malformed audio or an unsupported format (maps to INVALID_ARGUMENT)."""


class AudioDecoder:
    """Turns the `AudioChunk.data` of one stream into float32 mono samples at `target_rate`.

    Args:
        fmt: the stream's `AudioFormat` (validated here).
        target_rate: the model's sample rate; None keeps the device's rate.
        max_chunk_bytes: larger chunks are rejected.
    """

    def __init__(self, fmt: audio_pb2.AudioFormat, target_rate: int | None, max_chunk_bytes: int) -> None:
        if fmt.encoding not in _BYTES:
            name = dict((v, k) for k, v in audio_pb2.AudioEncoding.items()).get(fmt.encoding, str(fmt.encoding))
            raise AudioError(f"unsupported audio encoding {name}: use AUDIO_ENCODING_PCM16 or AUDIO_ENCODING_FLOAT32")
        if not MIN_RATE <= fmt.sample_rate <= MAX_RATE:
            raise AudioError(f"sample rate {fmt.sample_rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")
        channels = fmt.num_channels or 1
        if not 1 <= channels <= MAX_CHANNELS:
            raise AudioError(f"num_channels {fmt.num_channels} is outside 1..{MAX_CHANNELS}")
        self.encoding = fmt.encoding
        self.sample_rate = fmt.sample_rate
        self.channels = channels
        self.frame_bytes = _BYTES[fmt.encoding] * channels
        self.max_chunk_bytes = max_chunk_bytes
        self.out_rate = target_rate or fmt.sample_rate
        self._resampler = None
        if self.out_rate != self.sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(self.sample_rate, self.out_rate, 1, dtype="float32", quality="HQ")
        self.frames_in = 0  # device frames accepted so far: the stream's audio clock

    @property
    def seconds(self) -> float:
        """Seconds of device audio decoded so far."""
        return self.frames_in / self.sample_rate

    def decode(self, data: bytes) -> np.ndarray:
        """Validate one chunk and return float32 mono samples at `out_rate` (may be empty)."""
        n = len(data)
        if n > self.max_chunk_bytes:
            raise AudioError(f"audio chunk of {n} bytes exceeds the limit of {self.max_chunk_bytes} bytes")
        if n % self.frame_bytes:
            raise AudioError(
                f"audio chunk of {n} bytes is not a whole number of {_NAMES[self.encoding]} frames "
                f"({self.frame_bytes} bytes each for {self.channels} channel(s))"
            )
        if self.encoding == audio_pb2.AUDIO_ENCODING_PCM16:
            x = np.frombuffer(data, dtype="<i2").astype(np.float32) * (1.0 / 32768.0)
        else:
            x = np.frombuffer(data, dtype="<f4").astype(np.float32)
            if not np.isfinite(x).all():
                raise AudioError("audio chunk contains NaN or infinite samples")
        if self.channels > 1:
            x = x.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        self.frames_in += x.shape[0]
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=False)
        return np.ascontiguousarray(x, dtype=np.float32)


    def flush(self) -> np.ndarray:
        """The resampler's held-back tail, at end of input."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return np.ascontiguousarray(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True), np.float32)


def encode_audio(samples: np.ndarray, encoding: int = audio_pb2.AUDIO_ENCODING_PCM16) -> bytes:
    """Encode float32 samples in [-1, 1] (frames x channels or mono) as the device would."""
    x = np.asarray(samples, dtype=np.float32)
    if encoding == audio_pb2.AUDIO_ENCODING_PCM16:
        return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    if encoding == audio_pb2.AUDIO_ENCODING_FLOAT32:
        return x.astype("<f4").tobytes()
    raise ValueError(f"unsupported encoding {encoding}")
