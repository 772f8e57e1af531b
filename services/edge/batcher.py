"""Cross-stream batching of spotter work: one onnxruntime call for the chunks of many devices.

Each session submits its next chunk and waits; chunks that arrive while a batch is running are
decoded together in the next one (`Spotter.decode_streams`). At low load a batch holds one chunk
and adds no delay; under load the encoder runs on [B, T] instead of B times on [1, T], which is
where the per-call overhead of onnxruntime and numpy goes. `workers` batches run at once (one per
thread of the pool) so onnxruntime's GIL-free work overlaps with Python work of the other batch.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor


class DecodeBatcher:
    """Batches `(stream, rate, samples)` submissions across sessions.

    Args:
        spotter: an `edge.spotter.Spotter` (is_ready, decode_streams).
        executor: the thread pool that runs batches.
        workers: batches in flight at once.
        max_batch: most chunks per batch.
    """

    def __init__(self, spotter, executor: Executor, workers: int = 2, max_batch: int = 64) -> None:
        self.spotter = spotter
        self.executor = executor
        self.workers = max(1, workers)
        self.max_batch = max_batch
        self._pending: list[tuple] = []
        self._running = 0
        self.batches = 0
        self.items = 0

    async def submit(self, stream, sample_rate: int, samples) -> tuple[list, float]:
        """Feed `samples` (None: end of input) and decode what is ready; returns (detections, cpu s)."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((stream, sample_rate, samples, fut))
        self._kick()
        return await fut

    def _kick(self) -> None:
        while self._pending and self._running < self.workers:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            self._running += 1
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, self._work, batch)
            for (*_, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    if isinstance(res, BaseException):
                        fut.set_exception(res)
                    else:
                        fut.set_result(res)
        except BaseException as e:  # the pool is gone (shutdown): fail the waiters, not the loop
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else RuntimeError("decode cancelled"))
            if not isinstance(e, Exception):
                raise
        finally:
            self._running -= 1
            self.batches += 1
            self.items += len(batch)
            self._kick()

    def _work(self, batch: list[tuple]) -> list:
        """In a worker thread: accept each chunk, then decode all ready streams together."""
        t0 = time.thread_time()
        out: list = [None] * len(batch)
        live = []
        for i, (stream, rate, samples, _) in enumerate(batch):
            try:
                if samples is None:
                    stream.input_finished()
                else:
                    stream.accept_waveform(rate, samples)
                live.append(i)
            except Exception as e:  # one bad stream must not fail the others of its batch
                out[i] = e
        streams = [batch[i][0] for i in live]
        while True:
            ready = [s for s in streams if self.spotter.is_ready(s)]
            if not ready:
                break
            self.spotter.decode_streams(ready)
        cpu = (time.thread_time() - t0) / max(1, len(live))
        for i in live:
            out[i] = (list(batch[i][0].results()), cpu)
        return out
