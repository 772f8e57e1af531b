"""Training-time evaluation on held-out-voice synthetic dev sets (pairs and streams).

The scoring is the torch twin of the serving arithmetic (`kws.matching` == `edge.scoring`), run on
the training device; the exported model is measured again on CPU through `wakeline kws eval`.
Stream decisions (threshold + refractory) use `decide`, the same rule as `edge.stream`.
"""

from __future__ import annotations

import numpy as np
import torch

from edge.confusable import edit_phonemes
from edge.scoring import NMAX
from kws.matching import Matcher, dsp_partition
from kws.train import PAD_FEAT

FRAME_S = 0.02
REFRACTORY_S = 1.0


def auc_eer(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """ROC AUC (ties count half) and equal error rate of scores."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    i = 0
    while i < len(sv):
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    auc = (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
    thr = np.unique(allv)
    frr = np.array([(pos < t).mean() for t in thr])
    far = np.array([(neg >= t).mean() for t in thr])
    k = int(np.argmin(np.abs(frr - far)))
    return float(auc), float((frr[k] + far[k]) / 2)


def pair_rows(examples: list[dict], seed: int = 0) -> list[tuple[int, list[int], int, str]]:
    """(example index, text ids, label, kind): positive, hard (one phoneme edit), easy per clip."""
    rng = np.random.default_rng(seed)
    rows = []
    texts = [[int(x) for x in e["ids"]][:NMAX] for e in examples]
    for i, ids in enumerate(texts):
        rows.append((i, ids, 1, "positive"))
        rows.append((i, edit_phonemes(ids, rng, n_edits=1)[0][:NMAX], 0, "hard"))
        j = int(rng.integers(len(texts) - 1))
        j += j >= i
        rows.append((i, texts[j], 0, "easy"))
    return rows


@torch.no_grad()
def frame_scores(model, matcher: Matcher | None, table_emb: torch.Tensor, feats_list: list[np.ndarray],
                 rows: list[tuple[int, list[int]]], w_sim: float, w_ctc: float, device, batch: int = 256):
    """Per-row score curves (list of [T_i] numpy) of text rows against feature clips."""
    model.eval()
    enc = []
    for i in range(0, len(feats_list), 64):
        part = feats_list[i : i + 64]
        t = max(len(f) for f in part)
        t += t % 2
        x = np.full((len(part), t, part[0].shape[1]), PAD_FEAT, np.float32)
        for k, f in enumerate(part):
            x[k, : len(f)] = f
        logp, emb = model(torch.from_numpy(x).to(device))
        for k, f in enumerate(part):
            n = len(f) // 2
            enc.append((logp[k, :n], emb[k, :n]))
    out = []
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        t = max(len(enc[r[0]][0]) for r in part)
        v, e = enc[0][0].shape[1], enc[0][1].shape[1]
        lp = torch.full((len(part), t, v), -30.0, device=device)
        lp[..., 0] = 0.0
        em = torch.zeros(len(part), t, e, device=device)
        ids = torch.zeros(len(part), NMAX, dtype=torch.long, device=device)
        for k, (src, text) in enumerate(part):
            n = len(enc[src][0])
            lp[k, :n], em[k, :n] = enc[src]
            ids[k, : len(text)] = torch.tensor(text)
        n = torch.tensor([len(r[1]) for r in part], device=device)
        dp, feats = dsp_partition(em, lp, table_emb[ids], ids, n, w_sim, w_ctc)
        if matcher is None:
            sc = (dp / (w_sim + w_ctc)).clamp(0, 1)
        else:
            mask = torch.arange(NMAX, device=device)[None] < n[:, None]
            logit, _ = matcher(feats, mask[:, None].expand(-1, t, -1), dp, n[:, None].expand(-1, t))
            sc = torch.sigmoid(logit)
        for k, (src, _text) in enumerate(part):
            out.append(sc[k, : len(enc[src][0])].float().cpu().numpy())
    return out


def decide(scores: np.ndarray, threshold: float) -> list[int]:
    """Frames where a keyword fires: first frame >= threshold, then a refractory period."""
    fired, last = [], -1e9
    for t in np.nonzero(scores >= threshold)[0]:
        if (t - last) * FRAME_S >= REFRACTORY_S:
            fired.append(int(t))
            last = t
    return fired


def build_streams(kw_examples: dict[int, list[dict]], fillers: list[dict], seed: int = 0, per_stream: int = 40):
    """Concatenate filler sentences with keyword clips at random places (feature level).

    kw_examples: keyword index -> clips saying it. Returns a list of (feats [T, M], events) with
    events (keyword index, start frame, end frame) in 20 ms encoder frames.
    """
    rng = np.random.default_rng(seed)
    items = [("f", f) for f in fillers] + [("k", k, e) for k, es in kw_examples.items() for e in es]
    order = rng.permutation(len(items))
    streams, cur, events, t = [], [], [], 0
    for n, idx in enumerate(order):
        it = items[idx]
        f = it[1]["feats"] if it[0] == "f" else it[2]["feats"]
        f = f[: len(f) - len(f) % 2]
        if it[0] == "k":
            w = it[2]["words"]
            start = t + max(0, int(np.argmax(it[2]["frames"] >= 0)))
            events.append((it[1], start, t + int(w[-1][2])))
        cur.append(f)
        t += len(f) // 2
        if len(cur) == per_stream or n == len(order) - 1:
            streams.append((np.concatenate(cur).astype(np.float32), events))
            cur, events, t = [], [], 0
    return streams


def stream_metrics(curves: list[np.ndarray], events: list[list[tuple[int, int, int]]], keywords: list[int],
                   hours: float, target_fa: float = 0.5) -> dict:
    """FRR at <= target FA/h (threshold sweep), median/p90 latency after keyword end at that threshold.

    curves[s * K + k]: score curve of keyword k on stream s.
    """
    k_n = len(keywords)
    best = None
    for thr in np.linspace(0.05, 0.99, 95):
        hits, fas, lat, n_ev = 0, 0, [], 0
        for s, evs in enumerate(events):
            for k in range(k_n):
                fired = decide(curves[s * k_n + k], thr)
                mine = [(a, b) for (kk, a, b) in evs if kk == k]
                n_ev += len(mine)
                used = set()
                for f in fired:
                    m = [j for j, (a, b) in enumerate(mine) if a <= f <= b + 1.0 / FRAME_S and j not in used]
                    if m:
                        used.add(m[0])
                        hits += 1
                        lat.append((f - mine[m[0]][1]) * FRAME_S)
                    else:
                        fas += 1
        fa_h = fas / max(hours, 1e-9)
        rec = {"threshold": round(float(thr), 3), "frr": 1 - hits / max(n_ev, 1), "fa_per_hour": fa_h,
               "latency_median_s": float(np.median(lat)) if lat else None,
               "latency_p90_s": float(np.quantile(lat, 0.9)) if lat else None, "events": n_ev}
        if fa_h <= target_fa and (best is None or rec["frr"] < best["frr"]):
            best = rec
    return best or {"frr": 1.0, "fa_per_hour": None, "threshold": None}


def calibrate_gate(model_dir, examples: list[dict], quantile: float = 0.01, margin: float = 0.1) -> float:
    """Set the matcher's pre-filter gate below the partition scores of true keywords; returns it.

    For each clip (features) and its own phrase, the partition score at the frame where the
    matcher scores highest is recorded; the gate is a low quantile of those minus a margin, so the
    matcher is skipped only where a keyword is far from matching.
    """
    from pathlib import Path

    from edge.scoring import NEG, DSPState, MatcherWeights, frame_inputs, keyword_rows, keyword_score
    from edge.spotter import Spotter

    sp = Spotter.from_dir(model_dir)
    w = sp.matcher
    w.gate = NEG
    if not w.use_matcher:
        return NEG
    vals = []
    for e in examples:
        ids = [int(x) for x in e["ids"]]
        if len(ids) > NMAX:
            continue
        f = e["feats"].astype(np.float32)
        f = f[: len(f) - len(f) % 2]
        cache = np.zeros((1, sp.cache_len, sp.dim), np.float32)
        logp, emb, _ = sp.session.run(None, {"feats": f[None], "cache": cache})
        q, qi, mask, n = keyword_rows(sp.table_emb, [ids])
        st = DSPState(n, w.w_sim, w.w_ctc)
        best = (-1.0, NEG)
        for t in range(emb.shape[1]):
            dp, feats, _ = st.step(*frame_inputs(q, qi, emb[0, t][None], logp[0, t][None]))
            s = float(keyword_score(w, feats, mask, dp, n)[0])
            if s > best[0]:
                best = (s, float(dp[0]))
        vals.append(best[1])
    gate = float(np.quantile(vals, quantile) - margin)
    path = Path(model_dir) / "matcher.npz"
    mw = MatcherWeights.load(path)
    mw.gate = gate
    mw.save(path)
    return gate


def gate_examples(model_dir, manifest, limit: int = 150) -> list[dict]:
    """Positive trials of a pairs manifest as `calibrate_gate` examples (log-mel features, phoneme ids)."""
    import json
    from pathlib import Path

    from edge.spotter import Spotter
    from kws.eval.manifest import load_audio

    sp = Spotter.from_dir(model_dir)
    manifest = Path(manifest)
    out, seen = [], set()
    for line in manifest.read_text().splitlines():
        r = json.loads(line)
        if r["label"] != 1 or r["audio"] in seen:
            continue
        seen.add(r["audio"])
        x = load_audio(manifest.parent / r["audio"], sp.feature_cfg.sample_rate)
        out.append({"ids": sp.phoneme_ids(r["text"], limit=None), "feats": sp.logmel(x)})
        if len(out) >= limit:
            break
    if not out:
        raise ValueError(f"{manifest}: no positive trials to calibrate on")
    return out
