"""End-to-end jobs: build the corpus, train a variant, evaluate it on the dev sets, export it.

    python -m kws.pipeline corpus --out DIR --train 60000 --workers 14
    python -m kws.pipeline variant --config CFG.json --corpus DIR --out DIR [--device cuda]

Used by `wakeline kws train` and by scripts/gpu/train_kws.sh (variants run as concurrent
processes on one GPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from kws.corpus import generate, new_pool, random_sentence

# torch and the trainer are imported inside the functions that need them: corpus worker
# processes re-import this module and should stay light

log = logging.getLogger("wakeline.kws.pipeline")


def build_corpus(out: str | Path, n_train: int, n_pairs: int, n_fill: int, kw_reps: int, workers: int,
                 seed: int = 0, max_seconds: float = 1e9, train_seed: int | None = None) -> dict:
    """Write dev.pkl (held-out voices) then train.pkl under `out`; return sizes and timings.

    The dev sets are made first (small, needed whole); training synthesis stops at the time left
    of `max_seconds` and keeps what it has.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pool = new_pool(workers) if workers > 1 else None
    print(f"corpus: {workers} workers ready in {time.time() - t0:.0f} s", flush=True)
    pairs = generate(n_pairs, "dev", seed=seed + 2, workers=workers, lo=1, hi=3, pool=pool, job_size=50)
    fill = generate(n_fill, "dev", seed=seed + 3, workers=workers, lo=2, hi=5, pool=pool, job_size=50)
    rng = np.random.default_rng(seed + 4)
    keywords = [random_sentence(rng, 2, 2) for _ in range(10)]
    kws = generate(10 * kw_reps, "dev", seed=seed + 5, workers=workers, texts=keywords, job_size=20, pool=pool)
    with open(out / "dev.pkl", "wb") as f:
        pickle.dump({"pairs": pairs, "fill": fill, "kws": kws, "keywords": keywords}, f, protocol=5)
    t1 = time.time()
    train = generate(n_train, "train", seed=seed + 1 if train_seed is None else train_seed, workers=workers, lo=1, hi=5, pool=pool,
                     max_seconds=max(10.0, max_seconds - (t1 - t0)))
    if pool is not None:
        pool.terminate()
    t2 = time.time()
    with open(out / "train.pkl", "wb") as f:
        pickle.dump(train, f, protocol=5)
    info = {"train": len(train), "train_hours": sum(len(e["feats"]) for e in train) / 100 / 3600,
            "train_synth_s": round(t2 - t1, 1), "dev_synth_s": round(t1 - t0, 1), "pairs": len(pairs),
            "fill": len(fill), "keywords": keywords, "kw_clips": len(kws), "workers": workers,
            "train_engines": engine_counts(train)}
    (out / "corpus.json").write_text(json.dumps(info, indent=1))
    return info


def engine_counts(examples: list[dict]) -> dict[str, int]:
    """Training examples per TTS engine (``espeak``, ``flite``, ``kokoro`` from a pool)."""
    from collections import Counter

    return dict(Counter(e.get("voice", "").partition(":")[0] or "espeak" for e in examples))


def evaluate(tr, dev: dict, device) -> dict:
    """Pair AUC/EER (pos vs hard, pos vs easy) and streaming FRR@0.5FA/h + latency on dev."""
    from kws.devset import auc_eer, build_streams, frame_scores, pair_rows, stream_metrics

    c = tr.cfg
    matcher = tr.matcher if c.use_matcher else None
    pairs = dev["pairs"]
    rows = pair_rows(pairs, seed=1)
    curves = frame_scores(tr.model, matcher, tr.table_emb, [e["feats"] for e in pairs],
                          [(r[0], r[1]) for r in rows], c.w_sim, c.w_ctc, device)
    sc = np.array([cv.max() if len(cv) else 0.0 for cv in curves])
    kind = np.array([r[3] for r in rows])
    res = {}
    for neg in ("hard", "easy"):
        auc, eer = auc_eer(sc[kind == "positive"], sc[kind == neg])
        res[f"pair_{neg}_auc"], res[f"pair_{neg}_eer"] = round(auc, 4), round(eer, 4)
    kw_ids = {}
    for e in dev["kws"]:
        kw_ids.setdefault(dev["keywords"].index(e["text"]), []).append(e)
    streams = build_streams(kw_ids, dev["fill"], seed=2)
    kw_text = {k: [int(x) for x in v[0]["ids"]] for k, v in kw_ids.items()}
    keys = sorted(kw_text)
    srows = [(s, kw_text[k]) for s in range(len(streams)) for k in keys]
    curves = frame_scores(tr.model, matcher, tr.table_emb, [s[0] for s in streams], srows, c.w_sim, c.w_ctc,
                          device, batch=16)
    hours = sum(len(s[0]) for s in streams) / 100 / 3600
    events = [[(keys.index(k), a, b) for (k, a, b) in s[1]] for s in streams]
    sm = stream_metrics(curves, events, list(range(len(keys))), hours)
    res.update({f"stream_{k}": v for k, v in sm.items()})
    res["stream_hours"] = round(hours, 3)
    return res


def run_variant(cfg, corpus: str | Path, out: str | Path, device: str = "cpu", live_workers: int = 0,
                live_seed: int = 1000) -> dict:
    """Train (resumable), evaluate, export; writes metrics.json and the model dir under `out`.

    live_workers > 0: keep synthesizing new training examples in that many processes while training
    (kws.corpus.LiveCorpus); the count made is reported as `live_examples`.
    """
    import torch

    from kws.export import export_model
    from kws.models.encoder import num_params
    from kws.train import Trainer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if device == "cpu":
        torch.set_num_threads(1)
    with open(Path(corpus) / "train.pkl", "rb") as f:
        train = pickle.load(f)
    with open(Path(corpus) / "dev.pkl", "rb") as f:
        dev = pickle.load(f)
    tr = Trainer(cfg, device, out)
    stored = len(train)
    live = None
    if live_workers > 0:
        from kws.corpus import LiveCorpus

        live = LiveCorpus(train, live_workers, seed=live_seed)
    t0 = time.time()
    try:
        tr.train(train)
    finally:
        if live is not None:
            live.close()
    train_s = time.time() - t0
    t1 = time.time()
    metrics = evaluate(tr, dev, torch.device(device))
    metrics.update({"name": cfg.name, "steps": tr.step, "train_s": round(train_s, 1),
                    "eval_s": round(time.time() - t1, 1), "params_encoder": num_params(tr.model),
                    "params_matcher": num_params(tr.matcher), "device": device,
                    "train_examples_stored": stored, "live_examples": live.made if live else 0,
                    "train_engines": engine_counts(train),
                    "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                    "config": asdict(cfg)})
    thr = metrics.get("stream_threshold") or 0.5
    export_model(tr.model, tr.matcher, tr.table_emb.cpu().numpy(), tr.table_logp.cpu().numpy(), out / "model",
                 w_sim=cfg.w_sim, w_ctc=cfg.w_ctc, use_matcher=cfg.use_matcher, default_threshold=thr,
                 extra={"name": cfg.name, "steps": tr.step, "label_delay": cfg.label_delay,
                        "rank_weight": cfg.rank_weight, "edge_deletion": cfg.edge_deletion}, int8=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "history.json").write_text(json.dumps(tr.history))
    log.info("%s metrics %s", cfg.name, json.dumps({k: v for k, v in metrics.items() if k != "config"}))
    return metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kws.pipeline")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("--out", required=True)
    c.add_argument("--train", type=int, default=60000)
    c.add_argument("--pairs", type=int, default=1000)
    c.add_argument("--fill", type=int, default=1500)
    c.add_argument("--kw-reps", type=int, default=20)
    c.add_argument("--workers", type=int, default=1)
    c.add_argument("--max-seconds", type=float, default=1e9, help="stop training synthesis after this")
    c.add_argument("--train-seed", type=int, default=None, help="seed of the training sentences (dev sets keep theirs)")
    v = sub.add_parser("variant")
    v.add_argument("--config", required=True, help="TrainConfig JSON file, or inline JSON")
    v.add_argument("--corpus", required=True)
    v.add_argument("--out", required=True)
    v.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    v.add_argument("--live-workers", type=int, default=0, help="synthesize more training data while training")
    v.add_argument("--live-seed", type=int, default=1000)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if a.cmd == "corpus":
        print(json.dumps(build_corpus(a.out, a.train, a.pairs, a.fill, a.kw_reps, a.workers,
                                      max_seconds=a.max_seconds, train_seed=a.train_seed)))
    else:
        import torch

        from kws.train import TrainConfig

        text = a.config if a.config.strip().startswith("{") else Path(a.config).read_text()
        d = json.loads(text)
        cfg = TrainConfig(**{k: v for k, v in d.items() if k in TrainConfig.__dataclass_fields__})
        run_variant(cfg, a.corpus, a.out, a.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                    live_workers=a.live_workers, live_seed=a.live_seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
