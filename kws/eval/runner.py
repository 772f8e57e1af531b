"""The work behind ``wakeline kws score|detect|eval|bench`` (the CLI only parses flags)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from kws.eval import manifest as M
from kws.eval import metrics


def score_manifest(backend, pairs_path: str, out: str, progress: bool = True) -> int:
    """Score every trial of a pairs manifest; write ``{"id", "score"}`` lines; return the count.

    A trial that cannot be scored raises with the trial id (never a silent skip).
    """
    from tqdm import tqdm

    pairs = M.read_pairs(pairs_path)
    rows, cache = [], {}
    for p in tqdm(pairs, desc="score", unit="trial", disable=not progress):
        if p.audio not in cache:
            cache = {p.audio: M.load_audio(p.audio)}  # trials of one clip are adjacent
        try:
            s = backend.score_pair(cache[p.audio], M.SAMPLE_RATE, p.text)
        except Exception as e:
            raise M.ManifestError(f"trial {p.id}: cannot score {p.text!r} on {p.audio}: {e}") from e
        if not np.isfinite(s):
            raise RuntimeError(f"trial {p.id}: score is {s}")
        rows.append({"id": p.id, "score": round(float(s), 6)})
    return M.write_jsonl(out, rows)


def detect_manifest(backend, streams_path: str, out: str, threshold: float | None = None,
                    progress: bool = True) -> int:
    """Run streaming detection on every recording; write detection lines; return the count."""
    from tqdm import tqdm

    streams = M.read_streams(streams_path)
    rows = []
    for st in tqdm(streams, desc="detect", unit="stream", disable=not progress):
        audio = M.load_audio(st.audio)
        try:
            found = backend.detect(audio, M.SAMPLE_RATE, st.keywords, threshold=threshold)
        except ValueError as e:  # a keyword the enrollment cannot spell, or too long to stream
            raise M.ManifestError(f"stream {st.id}: {e}") from e
        rows += [{"id": st.id, **d} for d in found]
    return M.write_jsonl(out, rows)


def evaluate(pairs: str | None, scores: str | None, streams: str | None, detections: str | None,
             out: str, threshold: float = 0.5) -> dict:
    """Metrics of the contract as one JSON (``out``), with DET plots as PNG next to it."""
    result: dict = {}
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    stem = out_path.with_suffix("")
    if pairs and scores:
        trials = M.read_pairs(pairs)
        sc = M.read_scores(scores)
        result["pairs"] = metrics.pair_metrics(trials, sc)
        result["pairs"]["hard_by_edit"] = metrics.hard_by_edit(trials, sc, _flat_phonemes())
        result["pairs"]["n_trials"] = len(trials)
        metrics.plot_pair_det(trials, sc, f"{stem}_pairs_det.png")
    if streams and detections:
        items = M.fill_durations(M.read_streams(streams))
        dets = M.read_detections(detections)
        result["streams"] = metrics.stream_metrics(items, dets, threshold)
        metrics.plot_stream_det(result["streams"], f"{stem}_streams_det.png")
    if not result:
        raise ValueError("evaluate: give --pairs with --scores and/or --streams with --detections")
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _flat_phonemes():
    from edge.phonemizer import Phonemizer

    return Phonemizer().flat


def summary_table(result: dict) -> str:
    """A short markdown table of the headline numbers."""
    lines = ["| metric | value |", "|---|---|"]
    for name, m in result.get("pairs", {}).items():
        if name == "hard_by_edit":
            lines += [f"| hard, {k} AUC | {v['auc']:.4f} (n={v['n_clips']}) |" for k, v in m.items()]
        elif isinstance(m, dict):
            lines.append(f"| {name} AUC / EER | {m['auc']:.4f} / {m['eer']:.2%} (n={m['n_positive']}+{m['n_negative']}) |")
    s = result.get("streams")
    if s:
        for fa, v in s["frr_at_fa_per_hour"].items():
            lines.append(f"| FRR @ {fa} FA/h | {v['frr']:.2%} (threshold {v['threshold']:.4g}) |")
        a = s["at_threshold"]
        lines.append(f"| at threshold {a['threshold']:g}: FRR / FA/h | {a['frr']:.2%} / {a['fa_per_hour']:.2f} |")
        lat = s["latency"]
        if lat["median"] is not None:
            lines.append(f"| latency median / p90 | {lat['median']:.3f} s / {lat['p90']:.3f} s |")
        lines.append(f"| streams: hours / events | {s['hours']:.2f} / {s['events']} |")
    return "\n".join(lines)


BENCH_KEYWORDS = ["lights on", "lights off", "stop music", "play music", "open the door", "close the door",
                  "volume up", "volume down", "hey computer", "call mom"]
# enrolled only for the timing: texts (and words) the detection run has not seen
ENROLL_TEXTS = ["kitchen timer", "garage lights", "next episode", "what is the weather", "zorblax"]


def bench(backend, seconds: float = 30.0, seed: int = 0) -> dict:
    """Speed report (spec section 3): streaming RTF with 10 keywords, per-chunk latency, enroll time,
    model size and parameters. The audio is eSpeak speech (the keywords among other words)."""
    from kws.data.espeak import synthesize

    rng = np.random.default_rng(seed)
    parts, n = [], 0
    texts = BENCH_KEYWORDS + ["the weather is nice today", "what time is it", "remind me tomorrow"]
    while n < seconds * M.SAMPLE_RATE:
        u = synthesize(texts[int(rng.integers(len(texts)))], voice="en-us")
        parts += [u.audio, np.zeros(int(rng.uniform(0.2, 1.0) * M.SAMPLE_RATE), np.float32)]
        n += len(u.audio) + len(parts[-1])
    audio = np.concatenate(parts)[: int(seconds * M.SAMPLE_RATE)]
    audio = audio + 0.003 * rng.standard_normal(len(audio)).astype(np.float32)
    backend.detect(audio[: M.SAMPLE_RATE], M.SAMPLE_RATE, BENCH_KEYWORDS)  # warm-up
    timings: list[float] = []
    t0 = time.perf_counter()
    backend.detect(audio, M.SAMPLE_RATE, BENCH_KEYWORDS, timings=timings)
    wall = time.perf_counter() - t0
    enroll = [backend.enroll_seconds(k) for k in ENROLL_TEXTS]
    ms = np.asarray(timings) * 1000
    return {
        **backend.info(),
        "audio_seconds": seconds, "keywords": len(BENCH_KEYWORDS),
        "rtf": round(wall / seconds, 5),
        "chunk_ms": 100, "chunk_latency_ms_median": round(float(np.median(ms)), 3),
        "chunk_latency_ms_p99": round(float(np.percentile(ms, 99)), 3),
        "enroll_ms_median": round(float(np.median(enroll)) * 1000, 3),
    }
