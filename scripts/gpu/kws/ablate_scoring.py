"""Inference-time scoring ablation of one checkpoint on a dev corpus (held-out voices).

    python scripts/gpu/kws/ablate_scoring.py --ckpt runs/train_kws3/train_kws/main/ckpt.pt \
        --dev /tmp/cpukws/corpus/dev.pkl --out runs/kws_ablate_scoring.json

Same encoder for every row; only the keyword scoring changes: DSP partition score alone
(embedding similarity only; similarity + CTC) vs the trained matcher on the DSP partition.
"""

from __future__ import annotations

import argparse
import json
import pickle

import numpy as np
import torch

from kws.devset import auc_eer, frame_scores, pair_rows
from kws.export import load_checkpoint


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    model, matcher, emb, _logp, cfg = load_checkpoint(a.ckpt)
    with open(a.dev, "rb") as f:
        dev = pickle.load(f)
    pairs = dev["pairs"]
    rows = pair_rows(pairs, seed=1)
    kind = np.array([r[3] for r in rows])
    table = torch.from_numpy(emb)
    modes = {"DSP only (similarity partition score)": (1.0, 0.0, None),
             "DSP partition score (similarity + CTC)": (1.0, 1.0, None),
             "DSP + SLiCK matcher (shipped)": (cfg["w_sim"], cfg["w_ctc"], matcher)}
    res = {}
    for name, (ws, wc, m) in modes.items():
        curves = frame_scores(model, m, table, [e["feats"] for e in pairs], [(r[0], r[1]) for r in rows], ws, wc,
                              torch.device("cpu"), batch=64)
        sc = np.array([c.max() for c in curves])
        hard = auc_eer(sc[kind == "positive"], sc[kind == "hard"])
        easy = auc_eer(sc[kind == "positive"], sc[kind == "easy"])
        res[name] = {"hard_auc": hard[0], "hard_eer": hard[1], "easy_auc": easy[0], "easy_eer": easy[1]}
        print(f"| {name} | {hard[0]:.3f} / {100 * hard[1]:.1f} % | {easy[0]:.3f} / {100 * easy[1]:.1f} % |",
              flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"ckpt": a.ckpt, "pairs": len(rows), "results": res}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
