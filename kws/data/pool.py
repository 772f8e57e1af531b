"""A stored pool of clean synthesized utterances, for engines too slow to synthesize live (Kokoro).

Training re-augments every draw (speed, room, channel, noise), so a few thousand clean
utterances of natural-sounding voices go a long way mixed into the live eSpeak/Flite stream.
A pool is a folder of shards ``pool-<seed>-<n>.npz`` (Kokoro; ``pool-<engine>-<seed>-<n>.npz``
for other engines, so one folder can hold several): Opus-in-Ogg bytes per utterance (16 kHz,
~3 KB per second of speech, so the pool travels to a GPU machine) and its labels as JSON
(``Utterance.labels()``). Opus keeps the sample timing (no codec delay after decoding), so the
alignments stay exact.

    python -m kws.data.pool build --out data/kws/kokoro_pool --count 3000 --workers 2
    python -m kws.data.pool build --engine piper --out data/kws/piper_pool --count 3000
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

from kws.data.utterance import SAMPLE_RATE, Utterance


def encode(audio: np.ndarray) -> bytes:
    """16 kHz float audio -> Opus-in-Ogg bytes."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1, 1).astype(np.float32), SAMPLE_RATE, format="OGG", subtype="OPUS")
    return buf.getvalue()


def decode(blob: bytes) -> np.ndarray:
    """Opus-in-Ogg bytes -> 16 kHz float32 audio."""
    import soundfile as sf

    audio, sr = sf.read(io.BytesIO(blob), dtype="float32")
    if sr != SAMPLE_RATE:
        raise ValueError(f"pool: {sr} Hz audio, expected {SAMPLE_RATE}")
    return audio


def write_shard(path: Path, utts: list[Utterance]) -> None:
    """Write utterances to one shard (atomically: a reader never sees half a shard)."""
    blobs = [encode(u.audio) for u in utts]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    labels = json.dumps([u.labels() for u in utts])
    tmp = path.with_name(path.name + ".tmp")  # not matched by the readers' pool-*.npz
    with open(tmp, "wb") as f:
        np.savez_compressed(f, blob=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
                            labels=np.frombuffer(labels.encode(), np.uint8))
    tmp.replace(path)


class Pool:
    """All shards of a pool folder, kept compressed in memory; ``get(i)`` decodes one utterance."""

    def __init__(self, folder: str | Path):
        self.items: list[tuple[bytes, dict]] = []
        for shard in sorted(Path(folder).glob("pool-*.npz")):
            if shard.name.endswith(".tmp.npz"):
                continue  # a shard being written (by an older writer's naming)
            with np.load(shard) as z:
                blob, offsets = z["blob"].tobytes(), z["offsets"]
                labels = json.loads(z["labels"].tobytes().decode())
            self.items += [(blob[offsets[i]:offsets[i + 1]], labels[i]) for i in range(len(labels))]
        if not self.items:
            raise FileNotFoundError(f"pool: no pool-*.npz shards in {folder}")

    def __len__(self) -> int:
        return len(self.items)

    def get(self, i: int) -> Utterance:
        blob, lab = self.items[i]
        audio = decode(blob)
        return Utterance(audio=audio, text=lab["text"], words=lab["words"], phonemes=lab["phonemes"],
                         word_times=[tuple(s) for s in lab["word_times"]],
                         phone_times=[[tuple(s) for s in w] for w in lab["phone_times"]],
                         engine=lab["engine"], voice=lab["voice"], params=lab.get("params", {}))


def _build_job(args) -> str:
    folder, seed, count, split, engine = args
    from kws.corpus import random_sentence
    from kws.data.synth import random_params, synthesize

    rng = np.random.default_rng(seed)
    utts: list[Utterance] = []
    while len(utts) < count:
        params = random_params(rng, split, engines=(engine,))
        try:
            utts.append(synthesize(random_sentence(rng), **params))
        except ValueError:
            continue  # an unpronounceable random word or an over-long input: draw again
    path = Path(folder) / shard_name(engine, seed, count)
    write_shard(path, utts)
    return str(path)


def shard_name(engine: str, seed: int, count: int) -> str:
    """A shard's file name; Kokoro's keep the first pools' form, so they resume."""
    return f"pool-{seed}-{count}.npz" if engine == "kokoro" else f"pool-{engine}-{seed}-{count}.npz"


def build(folder: str | Path, count: int, workers: int = 1, seed: int = 0, split: str = "train",
          engine: str = "kokoro", shard: int = 100) -> int:
    """Synthesize ``count`` more utterances into ``folder`` in shards of ``shard`` (resumable: a
    shard that exists is skipped). Returns the pool's size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), seed * 1000 + i, shard, split, engine) for i in range(max(1, count // shard))]
    jobs = [j for j in jobs if not (folder / shard_name(engine, j[1], j[2])).exists()]
    t0 = time.time()
    with mp.get_context("spawn").Pool(workers) as pool:
        for k, path in enumerate(pool.imap_unordered(_build_job, jobs)):
            print(f"{path} ({k + 1}/{len(jobs)}, {time.time() - t0:.0f} s)", flush=True)
    return len(Pool(folder))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="build a pool of clean synthesized utterances")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", required=True)
    b.add_argument("--count", type=int, default=1000)
    b.add_argument("--workers", type=int, default=1)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--split", default="train")
    b.add_argument("--engine", choices=["kokoro", "piper"], default="kokoro")
    b.add_argument("--shard", type=int, default=100)
    a = ap.parse_args(argv)
    n = build(a.out, a.count, a.workers, a.seed, a.split, a.engine, a.shard)
    print(f"pool {a.out}: {n} utterances")


if __name__ == "__main__":
    main()
