"""Edge KWS runtime speed: RTF with K keywords, enrollment time, batched multi-stream decoding.

    python bench/kws_runtime.py --model models/kws/default --out runs/bench/kws_runtime.json

One CPU thread (onnxruntime intra-op 1). Audio is synthetic noise (speed does not depend on
content, except the matcher pre-filter gate, which makes speech slightly slower than noise:
use --wav to stream a real recording instead).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

KEYWORDS = ["lights on", "stop the music", "open the door", "turn off the radio", "play next song",
            "call my mother", "volume up", "what time is it", "set a timer", "good night computer"]
ENROLL = ["kitchen lights", "garage door", "weather today", "pause video", "next chapter", "read my email",
          "lock the car", "start vacuum", "brew coffee", "close curtains", "air conditioner", "tell a joke",
          "where is my phone", "shopping list", "open the window", "turn up the heat", "hello wakeline",
          "mute microphone", "call the office", "play jazz"]


def _audio(args) -> np.ndarray:
    if args.wav:
        import soundfile as sf

        from edge.features import resample, to_mono_float

        x, sr = sf.read(args.wav, dtype="float32", always_2d=True)
        return resample(to_mono_float(x), sr)[: int(args.seconds * 16000)]
    return (np.random.default_rng(0).standard_normal(int(args.seconds * 16000)) * 0.05).astype(np.float32)


def rtf(sp, x: np.ndarray, keywords: list[str]) -> dict:
    """Stream x in 100 ms chunks with these keywords on one stream."""
    s = sp.create_stream(keywords)
    lat = []
    t0 = time.perf_counter()
    for i in range(0, len(x), 1600):
        c0 = time.perf_counter()
        s.accept_waveform(16000, x[i : i + 1600])
        while sp.is_ready(s):
            sp.decode(s)
        lat.append(time.perf_counter() - c0)
    dt = time.perf_counter() - t0
    return {"keywords": len(keywords), "rtf": dt / (len(x) / 16000), "chunk_ms_median": 1e3 * float(np.median(lat)),
            "chunk_ms_p99": 1e3 * float(np.quantile(lat, 0.99))}


def batched(sp, x: np.ndarray, n_streams: int, keywords: list[str]) -> dict:
    """n streams decoded together (one onnxruntime call per 100 ms step for all of them)."""
    streams = [sp.create_stream(keywords) for _ in range(n_streams)]
    secs = min(len(x), 16000 * 5)
    t0 = time.perf_counter()
    for i in range(0, secs, 1600):
        for s in streams:
            s.accept_waveform(16000, x[i : i + 1600])
        sp.decode_streams(streams)
    dt = time.perf_counter() - t0
    return {"streams": n_streams, "rtf_per_stream": dt / n_streams / (secs / 16000)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/kws/default")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--wav", default=None)
    p.add_argument("--int8", action="store_true", help="use encoder.int8.onnx")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from edge.spotter import Spotter

    sp = Spotter.from_dir(args.model, num_threads=1, int8=args.int8)
    sp.enroll("warm up")  # loads the phonemizer
    x = _audio(args)
    times = []
    for text in ENROLL:
        t0 = time.perf_counter()
        sp.enroll(text)
        times.append(time.perf_counter() - t0)
    res = {"model": args.model, "int8": args.int8,
           "enroll_ms_median": 1e3 * float(np.median(times)), "enroll_ms_max": 1e3 * float(np.max(times)),
           "rtf": [rtf(sp, x, KEYWORDS[:k]) for k in (1, 10)],
           "batched": [batched(sp, x, n, KEYWORDS) for n in (1, 8, 32)]}
    print("| measure | value |\n|---|---|")
    print(f"| enroll by text, median / max (ms) | {res['enroll_ms_median']:.1f} / {res['enroll_ms_max']:.1f} |")
    for r in res["rtf"]:
        print(f"| RTF, {r['keywords']} keywords (chunk p50/p99 ms) | {r['rtf']:.4f} "
              f"({r['chunk_ms_median']:.2f} / {r['chunk_ms_p99']:.2f}) |")
    for r in res["batched"]:
        print(f"| batched decode, {r['streams']} streams x 10 keywords: RTF per stream | {r['rtf_per_stream']:.4f} |")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
