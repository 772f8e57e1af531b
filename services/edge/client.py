"""Device-side client of `EdgeService.Stream`: a WAV file, an array or a microphone in, events out.

Used by `wakeline device stream`, by bench/edge_load.py and by the tests, so all three talk to
the node exactly like a device does: config first, then audio chunks (paced at real time or as
fast as the node takes them), then an optional linger for answers before the half-close.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import numpy as np
from wakeline.v1 import audio_pb2, edge_pb2, edge_pb2_grpc

from services.edge.audio import encode_audio


@dataclass
class Received:
    """One response with the wall time it arrived and, for a detection, the end-to-end latency."""

    response: edge_pb2.StreamResponse
    t_recv: float
    latency_s: float | None = None  # arrival - moment the audio at the keyword's end_time was sent

    @property
    def kind(self) -> str:
        return self.response.WhichOneof("msg")


@dataclass
class DeviceAudio:
    """Audio to send: float32 samples (frames, or frames x channels) at `sample_rate`."""

    samples: np.ndarray
    sample_rate: int
    encoding: int = audio_pb2.AUDIO_ENCODING_PCM16

    @property
    def channels(self) -> int:
        return 1 if self.samples.ndim == 1 else self.samples.shape[1]

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.sample_rate

    @classmethod
    def from_file(cls, path: str, encoding: int = audio_pb2.AUDIO_ENCODING_PCM16) -> DeviceAudio:
        """Read any soundfile-readable file (any rate, any channel count)."""
        import soundfile as sf

        data, rate = sf.read(path, dtype="float32", always_2d=False)
        return cls(data, int(rate), encoding)


@dataclass
class StreamStats:
    sent_s: float = 0.0
    chunks: int = 0
    send_log: list[tuple[float, float]] = field(default_factory=list)  # (audio end s, wall time sent)

    def sent_wall(self, audio_t: float) -> float | None:
        """Wall time at which the chunk holding audio time `audio_t` was sent."""
        for end, wall in self.send_log:
            if end >= audio_t:
                return wall
        return self.send_log[-1][1] if self.send_log else None


def keyword_specs(keywords) -> list[edge_pb2.KeywordSpec]:
    """Text, or (text, threshold), or "text:0.7" -> KeywordSpec."""
    out = []
    for k in keywords:
        if isinstance(k, tuple):
            out.append(edge_pb2.KeywordSpec(text=k[0], threshold=k[1]))
        elif ":" in k:
            text, thr = k.rsplit(":", 1)
            out.append(edge_pb2.KeywordSpec(text=text, threshold=float(thr)))
        else:
            out.append(edge_pb2.KeywordSpec(text=k))
    return out


def open_channel(target: str, root_cert: bytes | None = None, max_message_bytes: int = 4 << 20) -> grpc.aio.Channel:
    """An aio channel to an edge node, TLS when `root_cert` (PEM) is given."""
    opts = [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]
    if root_cert is not None:
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_cert), options=opts)
    return grpc.aio.insecure_channel(target, options=opts)


def auth_metadata(token: str | None) -> tuple:
    return (("authorization", f"Bearer {token}"),) if token else ()


async def stream_device(channel: grpc.aio.Channel, device_id: str, keywords, audio: DeviceAudio | None = None,
                        *, chunk_ms: int = 100, realtime: bool = True, linger_s: float = 0.0,
                        token: str | None = None, attributes: dict | None = None,
                        mic_chunks: AsyncIterator[np.ndarray] | None = None, mic_rate: int = 16000,
                        stats: StreamStats | None = None, updates: asyncio.Queue | None = None,
                        ) -> AsyncIterator[Received]:
    """Run one device stream; yields every response as it arrives.

    Args:
        audio: what to send (a file/array); or `mic_chunks`, an async iterator of float32 blocks.
        realtime: pace chunks at the audio's own rate (else as fast as the node accepts them).
        linger_s: after the audio, keep the stream open this long for answers, then half-close.
        updates: optional queue of `KeywordUpdate`s to send between chunks.
    """
    stats = stats if stats is not None else StreamStats()
    if audio is not None:
        fmt = audio_pb2.AudioFormat(sample_rate=audio.sample_rate, encoding=audio.encoding, num_channels=audio.channels)
    else:
        fmt = audio_pb2.AudioFormat(sample_rate=mic_rate, encoding=audio_pb2.AUDIO_ENCODING_PCM16, num_channels=1)
    config = edge_pb2.StreamConfig(device_id=device_id, format=fmt, keywords=keyword_specs(keywords),
                                   attributes=attributes or {})

    started = asyncio.Event()
    failure: list[BaseException] = []

    async def requests():
        yield edge_pb2.StreamRequest(config=config)
        # Audio waits for StreamStarted: a rejected config then ends the call with the node's
        # status instead of racing our writes against its abort.
        await started.wait()
        try:
            async for req in _audio_requests():
                yield req
        except Exception as e:  # surfaced after the call, not as gRPC's CANCELLED
            failure.append(e)
            raise

    async def _audio_requests():
        t0 = time.perf_counter()
        seq = 0
        async for block in _blocks(audio, mic_chunks, chunk_ms):
            while updates is not None and not updates.empty():
                yield edge_pb2.StreamRequest(update=updates.get_nowait())
            if realtime and audio is not None:
                delay = t0 + stats.sent_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            seq += 1
            yield edge_pb2.StreamRequest(audio=audio_pb2.AudioChunk(data=encode_audio(block, fmt.encoding), seq=seq))
            stats.sent_s += block.shape[0] / fmt.sample_rate
            stats.chunks += 1
            stats.send_log.append((stats.sent_s, time.perf_counter()))
        if linger_s > 0:
            await asyncio.sleep(linger_s)

    call = edge_pb2_grpc.EdgeServiceStub(channel).Stream(requests(), metadata=auth_metadata(token))
    try:
        async for resp in call:
            started.set()
            now = time.perf_counter()
            latency = None
            if resp.WhichOneof("msg") == "detection":
                sent = stats.sent_wall(resp.detection.end_time)
                latency = None if sent is None else now - sent
            yield Received(resp, now, latency)
    except asyncio.CancelledError:
        if failure:
            raise failure[0] from None
        raise
    finally:
        started.set()
        call.cancel()


async def _blocks(audio: DeviceAudio | None, mic_chunks, chunk_ms: int):
    if audio is not None:
        n = max(1, int(audio.sample_rate * chunk_ms / 1000))
        for i in range(0, audio.samples.shape[0], n):
            yield audio.samples[i:i + n]
    elif mic_chunks is not None:
        async for block in mic_chunks:
            yield block


def microphone(sample_rate: int = 16000, block_ms: int = 100) -> AsyncIterator[np.ndarray]:
    """Float32 mono blocks from the default microphone (needs the optional `sounddevice` and PortAudio).

    Opens the device at once, so a missing library or device is a RuntimeError here, not mid-stream.
    """
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        raise RuntimeError(f"--mic needs the optional 'sounddevice' package and the PortAudio library: {e}") from e
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()

    def callback(indata, frames, t, status):
        loop.call_soon_threadsafe(q.put_nowait, indata[:, 0].copy())

    try:
        stream = sd.InputStream(samplerate=sample_rate, channels=1, dtype="float32",
                                blocksize=int(sample_rate * block_ms / 1000), callback=callback)
        stream.start()
    except Exception as e:  # sd.PortAudioError: no device, busy, unsupported rate
        raise RuntimeError(f"cannot open the microphone: {e}") from e

    async def blocks():
        try:
            while True:
                yield await q.get()
        finally:
            stream.stop()
            stream.close()

    return blocks()
