"""``wakeline kws data build``: deterministic, resumable, parallel dataset builds.

Work is cut into shards; shard ``k`` of part ``p`` draws everything from
``np.random.default_rng([seed, p, k])`` and runs in a fresh forked process (eSpeak keeps
waveform state between calls), so the output, audio included, does not depend on the number
of workers or on interruptions. A shard writes its audio, then its ``.jsonl`` part atomically;
a rerun skips shards whose part exists (resume). At the end the parts are merged into
``pairs.jsonl``, ``streams.jsonl`` and/or ``train.jsonl`` and a size/time report is written.

Presets (voices and phrases from the matching split, see ``kws.data.synth`` / ``lexicon``):

- ``dev`` / ``test``: 800 clips x 3 trials (positive, hard, easy) = 2,400 pair trials, and
  16 streams x 4 min (= 64 min, ~15 keyword events each).
- ``train``: 100,000 augmented utterances (FLAC) with word/phoneme alignments, keyword spans,
  hard and easy negative texts, 5 % background-only clips.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PARTS = {"pairs": 1, "streams": 2, "train": 3}


@dataclass
class Preset:
    split: str
    pair_clips: int = 0
    clips_per_shard: int = 50
    streams: int = 0
    stream_seconds: float = 240.0
    train_utts: int = 0
    utts_per_shard: int = 500
    engines: tuple[str, ...] = ("espeak", "flite")


PRESETS = {
    "dev": Preset("dev", pair_clips=800, streams=16),
    "test": Preset("test", pair_clips=800, streams=16),
    "train": Preset("train", train_utts=100_000),
    # an unseen neural voice (Kokoro's jf_nezumi; training hears its other voices): pairs only
    "kokoro-dev": Preset("dev", pair_clips=200, engines=("kokoro",)),
    # a natural US voice (Piper's joe): unseen unless training drew from a Piper pool; pairs only
    "piper-dev": Preset("dev", pair_clips=200, engines=("piper",)),
    "tiny": Preset("dev", pair_clips=8, clips_per_shard=4, streams=1, stream_seconds=40.0, train_utts=10,
                   utts_per_shard=5),
}

_CTX = {}


def _context(split: str, seed: int, engines: tuple[str, ...] = ("espeak", "flite")):
    from kws.data.examples import Context

    key = (split, seed, engines)
    if key not in _CTX:
        _CTX[key] = Context(split, seed=seed, engines=engines)
    return _CTX[key]


def _run_shard(job: tuple) -> tuple[str, int, int, float]:
    """Build one shard; return ``(part, shard, items, audio seconds)``."""
    part, shard, count, preset, seed, out = job
    from kws.data.espeak import ESpeak
    from kws.data.examples import make_pair_clip, make_stream, make_train_example
    from kws.eval.manifest import write_audio, write_jsonl

    out = Path(out)
    ctx = _context(preset.split, seed, preset.engines)
    rng = np.random.default_rng([seed, PARTS[part], shard])
    ESpeak.get().seed(int(rng.integers(2**31)))
    rows, seconds = [], 0.0
    if part == "pairs":
        for i in range(count):
            utt, trials = make_pair_clip(ctx, rng)
            rel = f"clips/{shard:04d}/{i:03d}.wav"
            write_audio(out / rel, utt.audio)
            seconds += utt.duration
            cid = f"p{shard:04d}-{i:03d}"
            for t in trials:
                rows.append({"id": f"{cid}-{t['kind']}", "audio": rel, **t,
                             "voice": utt.voice, "phonemes": ctx.lexicon.phonemes(t["text"])})
    elif part == "streams":
        audio, row = make_stream(ctx, rng, seconds=preset.stream_seconds)
        rel = f"streams/s{shard:03d}.wav"
        write_audio(out / rel, audio)
        seconds += len(audio) / 16000
        rows.append({"id": f"s{shard:03d}", "audio": rel, **row})
    else:
        for i in range(count):
            utt, row = make_train_example(ctx, rng)
            rel = f"train/{shard:05d}/{i:04d}.flac"
            audio = row.pop("_audio") if utt is None else utt.audio
            write_audio(out / rel, audio)
            seconds += len(audio) / 16000
            rows.append({"id": f"u{shard:05d}-{i:04d}", "audio": rel, **row})
    write_jsonl(out / "parts" / f"{part}-{shard:05d}.jsonl", rows)
    return part, shard, count, seconds


def _jobs(preset: Preset, seed: int, out: Path) -> list[tuple]:
    jobs = []

    def add(part, total, per):
        for shard in range((total + per - 1) // per):
            jobs.append((part, shard, min(per, total - shard * per), preset, seed, str(out)))

    if preset.pair_clips:
        add("pairs", preset.pair_clips, preset.clips_per_shard)
    if preset.streams:
        add("streams", preset.streams, 1)
    if preset.train_utts:
        add("train", preset.train_utts, preset.utts_per_shard)
    return jobs


def _merge(out: Path, part: str, name: str, strip: tuple[str, ...] = ()) -> int:
    from kws.eval.manifest import write_jsonl

    parts = sorted((out / "parts").glob(f"{part}-*.jsonl"))

    def rows():
        for p in parts:
            with open(p, encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    for k in strip:
                        row.pop(k, None)
                    yield row

    return write_jsonl(out / name, rows()) if parts else 0


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(preset_name: str, out: str | Path, seed: int = 0, workers: int = 1, progress: bool = True,
          preset: Preset | None = None) -> dict:
    """Build a dataset into ``out``; return (and write to ``out/report.json``) a size/time report.

    Args:
        preset_name: ``dev``, ``test``, ``train`` or ``tiny`` (a smoke test).
        out: output folder (reused for resuming).
        seed: the single source of randomness.
        workers: processes (each builds its own synthesizer, lexicon and rooms, ~5 s).
        preset: override the named preset's sizes.
    """
    from tqdm import tqdm

    from kws.data.augment import load_noise_bank

    preset = preset or PRESETS[preset_name]
    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    load_noise_bank(fetch=True)  # once, before the workers, so they all see the same clips
    t0 = time.time()
    jobs = _jobs(preset, seed, out)
    todo = [j for j in jobs if not (out / "parts" / f"{j[0]}-{j[1]:05d}.jsonl").exists()]
    total_items = sum(j[2] for j in jobs)
    done_items = total_items - sum(j[2] for j in todo)
    bar = tqdm(total=total_items, initial=done_items, unit="item", disable=not progress,
               desc=f"kws data {preset_name}")
    if todo:
        # the lexicon, rooms and noise are built once here and inherited by the forked workers;
        # every shard runs in a fresh process, so eSpeak's state (which carries over between
        # calls) is the same whichever worker builds it: the output is bit-identical
        ctx = _context(preset.split, seed, preset.engines)
        ctx.lexicon.warmup()
        # streams are the longest shards: start them first so the tail is short
        todo.sort(key=lambda j: j[0] != "streams")
        with mp.get_context("fork").Pool(max(1, workers), maxtasksperchild=1) as pool:
            for _, _, n, _ in pool.imap_unordered(_run_shard, todo):
                bar.update(n)
    bar.close()
    counts = {
        "pairs": _merge(out, "pairs", "pairs.jsonl"),
        "streams": _merge(out, "streams", "streams.jsonl"),
        "train": _merge(out, "train", "train.jsonl"),
    }
    report = _report(out, preset_name, seed, workers, counts, time.time() - t0, len(todo), len(jobs))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _report(out: Path, preset_name: str, seed: int, workers: int, counts: dict, elapsed: float,
            built: int, shards: int) -> dict:
    from kws.eval.manifest import iter_jsonl

    rep = {"preset": preset_name, "seed": seed, "workers": workers, "seconds": round(elapsed, 1),
           "shards_built": built, "shards_total": shards, "bytes": _du(out), "cpu_count": os.cpu_count()}
    if counts["pairs"]:
        kinds: dict[str, int] = {}
        clips = set()
        for _, r in iter_jsonl(out / "pairs.jsonl"):
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
            clips.add(r["audio"])
        rep["pairs"] = {"trials": counts["pairs"], "clips": len(clips), **kinds}
    if counts["streams"]:
        import soundfile as sf

        n_ev, secs = 0, 0.0
        for _, r in iter_jsonl(out / "streams.jsonl"):
            n_ev += len(r["events"])
            secs += sf.info(str(out / r["audio"])).duration
        rep["streams"] = {"streams": counts["streams"], "hours": round(secs / 3600, 3), "events": n_ev}
    if counts["train"]:
        secs, bg = 0.0, 0
        for _, r in iter_jsonl(out / "train.jsonl"):
            secs += r["duration"]
            bg += bool(r.get("background"))
        rep["train"] = {"utterances": counts["train"], "hours": round(secs / 3600, 3), "background": bg}
    return rep


def format_report(rep: dict) -> str:
    """A few human-readable lines of a build report."""
    lines = [f"preset {rep['preset']} seed {rep['seed']}: {rep['seconds']:.0f} s with {rep['workers']} workers, "
             f"{rep['shards_built']}/{rep['shards_total']} shards built now, {rep['bytes'] / 1e6:.1f} MB"]
    if "pairs" in rep:
        p = rep["pairs"]
        lines.append(f"  pairs: {p['trials']} trials on {p['clips']} clips "
                     f"({p.get('positive', 0)} positive, {p.get('hard', 0)} hard, {p.get('easy', 0)} easy)")
    if "streams" in rep:
        s = rep["streams"]
        lines.append(f"  streams: {s['streams']} recordings, {s['hours']:.2f} h, {s['events']} keyword events")
    if "train" in rep:
        t = rep["train"]
        lines.append(f"  train: {t['utterances']} utterances, {t['hours']:.2f} h, {t['background']} background")
    return "\n".join(lines)
