"""`wakeline kws data build | score | detect | eval | bench`: data and evaluation (shared/specs/kws-eval.md)."""

from __future__ import annotations

import json
import os
import sys

from services.cli.common import add_command, add_group
from services.shipped import KWS_MODEL

DEFAULT_MODEL = str(KWS_MODEL)


def _data_build(args) -> int:
    from kws.data.build import build, format_report

    workers = args.workers or max(1, (os.cpu_count() or 2) - 1)
    rep = build(args.preset, args.out, seed=args.seed, workers=workers, progress=not args.no_progress)
    print(format_report(rep))
    return 0


def _data_real(args) -> int:
    from kws.data.real import build_real, build_real_phrases

    rep = (build_real_phrases if args.phrases else build_real)(args.out, seed=args.seed)
    print(json.dumps(rep, indent=2))
    return 0


def _manifest_errors(fn):
    """A bad manifest or unreadable clip is the user's to fix: one line on stderr and exit code 2."""

    def run(args) -> int:
        from kws.eval.manifest import ManifestError

        try:
            return fn(args)
        except ManifestError as e:
            print(f"wakeline: error: {e}", file=sys.stderr)
            return 2

    return run


@_manifest_errors
def _score(args) -> int:
    from kws.eval.backends import load_backend
    from kws.eval.runner import score_manifest

    n = score_manifest(load_backend(args.model, args.num_threads), args.manifest, args.out,
                       progress=not args.no_progress)
    print(f"scored {n} trials -> {args.out}")
    return 0


@_manifest_errors
def _detect(args) -> int:
    from kws.eval.backends import load_backend
    from kws.eval.runner import detect_manifest

    n = detect_manifest(load_backend(args.model, args.num_threads), args.manifest, args.out,
                        threshold=args.threshold, progress=not args.no_progress)
    print(f"{n} detections -> {args.out}")
    return 0


@_manifest_errors
def _eval(args) -> int:
    from kws.eval.runner import evaluate, summary_table

    if not ((args.pairs and args.scores) or (args.streams and args.detections)):
        print("kws eval: give --pairs with --scores and/or --streams with --detections", file=sys.stderr)
        return 2
    result = evaluate(args.pairs, args.scores, args.streams, args.detections, args.out, threshold=args.threshold)
    print(summary_table(result))
    print(f"results -> {args.out} (DET plots next to it)")
    return 0


def _bench(args) -> int:
    from kws.eval.backends import load_backend
    from kws.eval.runner import bench

    rep = bench(load_backend(args.model, num_threads=1), seconds=args.seconds)
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rep, indent=2) + "\n")
    print("| metric | value |\n|---|---|")
    for k, v in rep.items():
        print(f"| {k} | {v} |")
    return 0


def _model_flags(p) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="exported model folder (edge.spotter.Spotter.from_dir) or 'pocketsphinx' (baseline)")
    p.add_argument("--num-threads", type=int, default=1, help="inference threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(grp) -> None:
    """Add the data and evaluation commands to the `kws` group."""
    data = add_group(grp, "data", "Speech data: synthetic corpora and the real-speech dev set")
    p = add_command(data, "build", "Build a synthetic dataset (pairs.jsonl, streams.jsonl, train.jsonl)", _data_build)
    p.add_argument("--preset", choices=["dev", "test", "train", "kokoro-dev", "piper-dev", "tiny"], default="dev", help="what to build")
    p.add_argument("--out", required=True, help="output folder (rerun to resume)")
    p.add_argument("--seed", type=int, default=0, help="the only source of randomness")
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores but one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = add_command(data, "real", "Build the real-speech dev set from pocketsphinx-testdata and klettres-data",
                    _data_real)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="picks the negatives")
    p.add_argument("--phrases", action="store_true",
                   help="instead: 1-3 word phrases cut from the pocketsphinx sentences (LibriPhrase style, pairs only)")

    p = add_command(grp, "score", "Score every trial of a pairs manifest", _score)
    p.add_argument("manifest", help="pairs.jsonl")
    p.add_argument("--out", required=True, help="SCORES.jsonl")
    _model_flags(p)

    p = add_command(grp, "detect", "Streaming detection on every recording of a streams manifest", _detect)
    p.add_argument("manifest", help="streams.jsonl")
    p.add_argument("--out", required=True, help="DETECTIONS.jsonl")
    p.add_argument("--threshold", type=float, default=None,
                   help="detection threshold for every keyword (default: the model's); low values give the full DET")
    _model_flags(p)

    p = add_command(grp, "eval", "Metrics: AUC/EER of pairs, FRR@FA/h and latency of streams, DET plots", _eval)
    p.add_argument("--pairs", help="pairs.jsonl")
    p.add_argument("--scores", help="SCORES.jsonl from `kws score`")
    p.add_argument("--streams", help="streams.jsonl")
    p.add_argument("--detections", help="DETECTIONS.jsonl from `kws detect`")
    p.add_argument("--out", required=True, help="results.json (PNG plots go next to it)")
    p.add_argument("--threshold", type=float, default=0.5, help="operating point for FA/h, FRR and latency")

    p = add_command(grp, "bench", "Speed: streaming RTF with 10 keywords, chunk latency, enroll time, size", _bench)
    p.add_argument("--seconds", type=float, default=30.0, help="audio streamed")
    p.add_argument("--out", default=None, help="also write the report as JSON here")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="exported model folder (edge.spotter.Spotter.from_dir) or 'pocketsphinx' (baseline)")
