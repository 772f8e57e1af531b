"""Measurements behind docs/kws.md's notes on the deletion blind spot (session 8).

    # hard pairs whose text drops the spoken text's first / last phoneme: pooled AUC against
    # every positive, and the share of clips where the positive outscores its deletion
    python scripts/dev_data/deletions.py sides data/kws/real_phrases RUN/real_phrases.scores.jsonl
    # how often edit_phonemes' confusables are exactly such an edge deletion
    python scripts/dev_data/deletions.py edit-rate
    # penalise each text by how much its best one-phoneme insertion outscores it
    python scripts/dev_data/deletions.py insertion data/kws/real_phrases --model models/kws/default
    # score with a longer or shorter noise pad before the clip (edge.spotter pads 0.2 s)
    python scripts/dev_data/deletions.py pad data/kws/real_phrases --pre 0.5 --model models/kws/default
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from kws.eval.manifest import load_audio, read_pairs
from kws.eval.metrics import edit_kind, roc_auc


def _scores(path: str) -> dict[str, float]:
    return {r["id"]: r["score"] for r in map(json.loads, open(path))}


def _auc(pos: list[float], neg: list[float]) -> float:
    return roc_auc(pos + neg, [1] * len(pos) + [0] * len(neg))


def sides(data: str, scores_path: str, model: str) -> None:
    from edge.spotter import Spotter

    sp = Spotter.from_dir(model)
    pairs, sc = read_pairs(Path(data) / "pairs.jsonl"), _scores(scores_path)
    pos = {p.audio: p for p in pairs if p.kind == "positive"}
    every_pos = [sc[p.id] for p in pos.values()]
    found: dict[str, list[tuple[float, float]]] = {"start": [], "end": []}
    for p in pairs:
        if p.kind != "hard" or p.audio not in pos:
            continue
        a, b = sp.phoneme_ids(pos[p.audio].text, limit=None), sp.phoneme_ids(p.text, limit=None)
        side = "start" if b == a[1:] else "end" if b == a[:-1] else None
        if side:
            found[side].append((sc[p.id], sc[pos[p.audio].id]))
    for side, rows in found.items():
        if rows:
            neg = [h for h, _ in rows]
            wins = np.mean([q > h for h, q in rows])
            print(f"deletion-{side}: {len(rows)} pairs, pooled AUC {_auc(every_pos, neg):.3f}, "
                  f"positive wins on its clip {wins:.0%}")


def edit_rate(n: int = 20000, seed: int = 0) -> None:
    from edge.confusable import edit_phonemes

    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n):
        ids = [int(x) for x in rng.integers(0, 39, int(rng.integers(3, 13)))]
        new, _ = edit_phonemes(ids, rng)
        hits += new in (ids[1:], ids[:-1])
    print(f"edge deletions among {n} confusables of 3-12 phoneme spans: {hits / n:.2%}")


def _score_clips(sp, data: str, texts_of_pair):
    """Encode each clip once (with the spotter's pads) and score every pair's rows on it."""
    from edge.scoring import keyword_rows, score_frames
    from edge.spotter import _PAD_AFTER, _PAD_BEFORE

    out, clip = {}, {}
    for p in read_pairs(Path(data) / "pairs.jsonl"):
        if p.audio not in clip:  # trials of one clip are adjacent
            clip = {p.audio: sp.encode(np.concatenate([_PAD_BEFORE, load_audio(p.audio), _PAD_AFTER]))}
        emb, logp = clip[p.audio]
        rows = texts_of_pair(sp.phoneme_ids(p.text, limit=None))
        q, qi, mask, n = keyword_rows(sp.table_emb, rows)
        out[p.id] = (p, score_frames(sp.matcher, q, qi, mask, n, emb, logp).max(axis=1))
    return out


def _report(name: str, scored: dict) -> None:
    groups: dict[str, list[float]] = {"positive": [], "hard": [], "easy": []}
    for p, s in scored.values():
        groups[p.kind].append(s)
    print(f"{name}: hard {_auc(groups['positive'], groups['hard']):.3f}, "
          f"easy {_auc(groups['positive'], groups['easy']):.3f}")


def insertion(data: str, model: str) -> None:
    from edge.scoring import NMAX
    from edge.spotter import Spotter

    sp = Spotter.from_dir(model)
    v = len(sp.phonemes)

    def rows(ids):
        return [ids] + [(ids[:i] + [p] + ids[i:])[: 2 * NMAX] for i in range(len(ids) + 1) for p in range(v)]

    scored = _score_clips(sp, data, rows)
    spoken = {p.audio: p.text for p, _ in scored.values() if p.kind == "positive"}
    gains: dict[str, list[float]] = {}
    for p, s in scored.values():
        kind = p.kind
        if kind == "hard" and p.audio in spoken:
            kind = "hard, " + edit_kind(*([sp.phonemes[i] for i in sp.phoneme_ids(t, limit=None)]
                                          for t in (spoken[p.audio], p.text)))
        gains.setdefault(kind, []).append(float(s[1:].max() - s[0]))
    for kind, g in sorted(gains.items()):
        print(f"{kind}: best insertion beats the text on {np.mean(np.array(g) > 0):.0%} of {len(g)} "
              f"trials, mean gain {np.mean(g):+.3f}")
    for weight in (0.0, 0.5, 1.0, 2.0):
        _report(f"penalty weight {weight}", {k: (p, s[0] - weight * max(0.0, s[1:].max() - s[0]))
                                             for k, (p, s) in scored.items()})


def pad(data: str, model: str, pre: float) -> None:
    from edge import spotter as module

    noise = 3e-4 * np.random.default_rng(0x5EED).standard_normal(int(16000 * pre) + 1600).astype(np.float32)
    module._PAD_BEFORE, module._PAD_AFTER = noise[: int(16000 * pre)], noise[int(16000 * pre):]
    sp = module.Spotter.from_dir(model)
    _report(f"pad before {pre} s", {k: (p, s[0]) for k, (p, s) in _score_clips(sp, data, lambda ids: [ids]).items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("sides", "insertion", "pad"):
        p = sub.add_parser(name)
        p.add_argument("data", help="folder with pairs.jsonl")
        if name == "sides":
            p.add_argument("scores", help="SCORES.jsonl of `wakeline kws score`")
        if name == "pad":
            p.add_argument("--pre", type=float, required=True, help="seconds of noise before the clip")
        p.add_argument("--model", default="models/kws/default")
    sub.add_parser("edit-rate")
    a = ap.parse_args()
    if a.cmd == "sides":
        sides(a.data, a.scores, a.model)
    elif a.cmd == "edit-rate":
        edit_rate()
    elif a.cmd == "insertion":
        insertion(a.data, a.model)
    else:
        pad(a.data, a.model, a.pre)


if __name__ == "__main__":
    main()
