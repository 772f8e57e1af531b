"""`wakeline kws train | export | calibrate | soup`: train the keyword-spotting model and export it for the edge."""

from __future__ import annotations

import json
import os
from pathlib import Path

from services.cli.common import add_command


def _train(args) -> int:
    import torch

    from kws.pipeline import build_corpus, run_variant
    from kws.train import TrainConfig

    cfg = TrainConfig.load(args.config)
    out = Path(args.out or f"runs/kws/{cfg.name}")
    corpus = Path(args.corpus or out / "corpus")
    if not (corpus / "train.pkl").exists():
        workers = args.workers or max(1, (os.cpu_count() or 2) - 1)
        print(json.dumps(build_corpus(corpus, args.train_examples, args.dev_examples, args.dev_examples,
                                      args.kw_reps, workers, seed=cfg.seed)))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    metrics = run_variant(cfg, corpus, out, device)
    print(json.dumps({k: v for k, v in metrics.items() if k != "config"}, indent=1))
    print(f"model -> {out / 'model'}; checkpoint -> {out / 'ckpt.pt'}")
    return 0


def _export(args) -> int:
    from kws.export import export_model, load_checkpoint

    model, matcher, emb, logp, cfg = load_checkpoint(args.ckpt)
    out = export_model(model, matcher, emb, logp, args.out, w_sim=cfg["w_sim"], w_ctc=cfg["w_ctc"],
                       use_matcher=cfg["use_matcher"], default_threshold=args.threshold,
                       extra={"name": cfg["name"], "ckpt": str(args.ckpt)}, int8=args.int8)
    print(f"exported -> {out}")
    return 0


def _calibrate(args) -> int:
    from kws.devset import calibrate_gate, gate_examples

    gate = calibrate_gate(args.model, gate_examples(args.model, args.pairs, args.limit), margin=args.margin)
    print(f"matcher gate {gate:.4f} -> {Path(args.model) / 'matcher.npz'}")
    return 0


def _soup(args) -> int:
    from kws.soup import soup

    out = soup(args.models, args.out, default_threshold=args.threshold, matcher_from=args.matcher_from)
    print(f"soup of {len(args.models)} models -> {out}; set its matcher gate: wakeline kws calibrate {out} --pairs ...")
    return 0


def register(grp) -> None:
    """Add `train`, `export`, `calibrate` and `soup` to the `kws` group."""
    p = add_command(grp, "train", "Train the KWS model (corpus synthesized first if missing); resumable", _train)
    p.add_argument("--config", required=True, help="TrainConfig JSON (see kws/train.py, scripts/gpu/kws/)")
    p.add_argument("--out", default=None, help="run directory (default runs/kws/<name>)")
    p.add_argument("--corpus", default=None, help="corpus directory (default <out>/corpus)")
    p.add_argument("--train-examples", type=int, default=3000)
    p.add_argument("--dev-examples", type=int, default=200)
    p.add_argument("--kw-reps", type=int, default=5)
    p.add_argument("--workers", type=int, default=0, help="synthesis processes (0: cores - 1)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p = add_command(grp, "export", "Export a checkpoint to an edge model directory (ONNX + tables)", _export)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=float, default=0.5, help="default keyword threshold (model card)")
    p.add_argument("--int8", action="store_true", help="also write encoder.int8.onnx")
    p = add_command(grp, "calibrate", "Set a model's matcher pre-filter gate from the positive trials of a "
                    "pairs manifest (held-out voices)", _calibrate)
    p.add_argument("model", help="model directory (its matcher.npz is rewritten)")
    p.add_argument("--pairs", required=True, help="pairs.jsonl whose positive trials are the true keywords")
    p.add_argument("--limit", type=int, default=150, help="positive clips used")
    # real speech's partition scores run lower than synthetic ones (1st percentile 1.06 vs 1.17 for
    # the run-8 model on the two dev sets), so the default keeps a wide margin below synthetic ones
    p.add_argument("--margin", type=float, default=0.25, help="gate = 1st percentile - margin")
    p = add_command(grp, "soup", "Average model directories of one warm-start lineage (encoder, matcher, phoneme "
                    "table) into a new model", _soup)
    p.add_argument("models", nargs="+", help="model directories (same encoder shape)")
    p.add_argument("--out", required=True, help="the new model directory")
    p.add_argument("--threshold", type=float, default=None, help="default keyword threshold (default: the first "
                   "model's)")
    p.add_argument("--matcher-from", default=None, help="keep this ingredient's matcher (default: average them)")
