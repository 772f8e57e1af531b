"""Metrics of the keyword-spotting contract: AUC, EER, DET curves, streaming FRR / FA/h / latency.

Pairs: ``score >= t`` accepts. FAR(t) = accepted negatives / negatives, FRR(t) = rejected
positives / positives. EER is where the two cross, linearly interpolated between adjacent
operating points. AUC is the Mann-Whitney probability that a positive outscores a negative
(ties count one half).

Streams (spec section 2): a detection is a hit if it names an event's keyword and
``start <= time <= end + 1.0``; each event takes at most one hit (the earliest); every other
detection is a false accept. FRR = missed events / events; FA/h = false accepts per hour.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

HIT_TOLERANCE = 1.0  # seconds after an event's end that a detection may still hit it


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties)."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc: need both positive and negative trials")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # mid-ranks over runs of equal scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(far, frr, thresholds)`` for every distinct threshold, from accept-all to accept-none."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    n_pos, n_neg = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    thr = np.unique(s)
    # accept if score >= t: counts of positives/negatives with score >= t via sorted search
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    acc_pos = len(pos) - np.searchsorted(pos, thr, side="left")
    acc_neg = len(neg) - np.searchsorted(neg, thr, side="left")
    far = np.concatenate([acc_neg / n_neg, [0.0]])
    frr = np.concatenate([1 - acc_pos / n_pos, [1.0]])
    return far, frr, np.concatenate([thr, [np.inf]])


def eer(scores, labels) -> tuple[float, float]:
    """``(equal error rate, threshold)``: where FAR and FRR cross, linearly interpolated."""
    far, frr, thr = det_curve(scores, labels)
    d = far - frr  # decreasing from >= 0 (accept all) to <= 0 (accept none)
    k = int(np.argmax(d <= 0))
    if d[k] == 0 or k == 0:
        return float(far[k]), float(thr[k])
    # the crossing lies between operating points k-1 and k
    w = d[k - 1] / (d[k - 1] - d[k])
    rate = far[k - 1] + w * (far[k] - far[k - 1])
    return float(rate), float(thr[k - 1] if w < 0.5 else thr[k])


def pair_metrics(pairs, scores: dict[str, float]) -> dict:
    """AUC and EER of positive vs hard and positive vs easy trials.

    Args:
        pairs: ``kws.eval.manifest.Pair`` list.
        scores: trial id -> score; every trial must have one.
    """
    missing = [p.id for p in pairs if p.id not in scores]
    if missing:
        raise ValueError(f"pair_metrics: {len(missing)} trials have no score (first: {missing[:3]})")
    out = {}
    pos = [scores[p.id] for p in pairs if p.kind == "positive"]
    for kind in ("hard", "easy"):
        neg = [scores[p.id] for p in pairs if p.kind == kind]
        if not pos or not neg:
            continue
        s, y = pos + neg, [1] * len(pos) + [0] * len(neg)
        rate, thr = eer(s, y)
        out[f"positive_vs_{kind}"] = {"auc": round(roc_auc(s, y), 5), "eer": round(rate, 5),
                                      "eer_threshold": thr, "n_positive": len(pos), "n_negative": len(neg)}
    return out


def edit_kind(spoken: list[str], text: list[str]) -> str:
    """How a hard text's phonemes differ from the spoken ones: ``substitution``, ``insertion``
    (the text has one phoneme more), ``deletion-start`` / ``deletion-end`` (one fewer, the first /
    the last: the text is a contiguous part of the speech), ``deletion-middle``, or ``other`` (more
    than one edit)."""
    n, m = len(spoken), len(text)
    if n == m:
        return "substitution" if sum(a != b for a, b in zip(spoken, text, strict=True)) == 1 else "other"
    if m == n + 1 and any(text[:i] + text[i + 1:] == spoken for i in range(m)):
        return "insertion"
    if m == n - 1:
        if text == spoken[1:]:
            return "deletion-start"
        if text == spoken[:-1]:
            return "deletion-end"
        if any(spoken[:i] + spoken[i + 1:] == text for i in range(n)):
            return "deletion-middle"
    return "other"


def hard_by_edit(pairs, scores: dict[str, float], phonemes) -> dict:
    """AUC of positive vs hard trials split by the hard text's edit (``edit_kind``).

    Each clip's positive and hard trials form one group's pair; ``phonemes(text)`` gives a flat
    phoneme list (the enrollment G2P). ``deletion-edge`` pools ``deletion-start`` and
    ``deletion-end``. Groups of fewer than 2 clips are left out.
    """
    by_clip: dict[str, dict] = defaultdict(dict)
    for p in pairs:
        if p.kind in ("positive", "hard"):
            by_clip[p.audio][p.kind] = p
    groups: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for d in by_clip.values():
        if len(d) == 2:
            try:
                kind = edit_kind(phonemes(d["positive"].text), phonemes(d["hard"].text))
            except ValueError:  # a text the G2P cannot spell (scored by another backend)
                continue
            for k in (kind, "deletion-edge") if kind in ("deletion-start", "deletion-end") else (kind,):
                groups[k][0].append(scores[d["positive"].id])
                groups[k][1].append(scores[d["hard"].id])
    return {k: {"auc": round(roc_auc(pos + neg, [1] * len(pos) + [0] * len(neg)), 5), "n_clips": len(pos)}
            for k, (pos, neg) in sorted(groups.items()) if len(pos) >= 2}


def match_detections(streams, detections: list[dict], threshold: float = -np.inf) -> dict:
    """Hits, misses and false accepts of detections with ``score >= threshold``.

    Returns ``{"events", "hits", "misses", "false_accepts", "hours", "latencies"}``.
    """
    dets = defaultdict(list)
    for d in detections:
        if d["score"] >= threshold:
            dets[(d["id"], d["keyword"])].append(d["time"])
    n_events = n_hits = n_fa = 0
    latencies: list[float] = []
    hours = 0.0
    known = set()
    for st in streams:
        hours += st.duration / 3600.0
        by_kw = defaultdict(list)
        for ev in st.events:
            by_kw[ev.keyword].append(ev)
        n_events += len(st.events)
        for kw in set(st.keywords) | set(by_kw):
            known.add((st.id, kw))
            events = sorted(by_kw.get(kw, []), key=lambda e: e.start)
            used = [False] * len(events)
            for t in sorted(dets.get((st.id, kw), [])):
                hit = False
                for i, ev in enumerate(events):
                    if not used[i] and ev.start <= t <= ev.end + HIT_TOLERANCE:
                        used[i], hit = True, True
                        latencies.append(t - ev.end)
                        break
                n_hits += hit
                n_fa += not hit
    # detections of keywords or streams the manifest does not list are false accepts too
    n_fa += sum(len(v) for k, v in dets.items() if k not in known)
    return {"events": n_events, "hits": n_hits, "misses": n_events - n_hits, "false_accepts": n_fa,
            "hours": hours, "latencies": latencies}


def stream_metrics(streams, detections: list[dict], threshold: float,
                   fa_targets: tuple[float, ...] = (0.5, 1.0), max_points: int = 400) -> dict:
    """FRR and FA/h at ``threshold``, FRR at fixed FA/h, latency, and the DET sweep.

    Args:
        streams: ``StreamItem`` list, each with ``duration`` (seconds) set.
        detections: every detection (run the detector with a low threshold to sweep).
        threshold: the operating point reported as ``at_threshold``.
        fa_targets: FA/h budgets for ``frr_at_fa_per_hour``.
        max_points: thresholds evaluated in the sweep (quantiles of the scores).
    """
    def point(t):
        m = match_detections(streams, detections, t)
        return {"threshold": float(t), "frr": m["misses"] / max(m["events"], 1),
                "fa_per_hour": m["false_accepts"] / max(m["hours"], 1e-9), "m": m}

    at = point(threshold)
    lat = np.asarray(at["m"]["latencies"])
    scores = np.unique([d["score"] for d in detections])
    if len(scores) > max_points:
        scores = np.unique(np.quantile(scores, np.linspace(0, 1, max_points)))
    sweep = [point(t) for t in scores] + [point(np.inf)]
    frr_at = {}
    for target in fa_targets:
        ok = [p for p in sweep if p["fa_per_hour"] <= target]
        best = min(ok, key=lambda p: (p["frr"], p["threshold"]))
        frr_at[str(target)] = {"frr": round(best["frr"], 5), "threshold": best["threshold"],
                               "fa_per_hour": round(best["fa_per_hour"], 4)}
    m = at["m"]
    return {
        "events": m["events"], "hours": round(m["hours"], 4),
        "at_threshold": {"threshold": threshold, "frr": round(at["frr"], 5),
                         "fa_per_hour": round(at["fa_per_hour"], 4), "hits": m["hits"],
                         "false_accepts": m["false_accepts"]},
        "frr_at_fa_per_hour": frr_at,
        "latency": {"median": float(np.median(lat)) if len(lat) else None,
                    "p90": float(np.percentile(lat, 90)) if len(lat) else None, "n": len(lat)},
        "det": [{"threshold": p["threshold"], "frr": p["frr"], "fa_per_hour": p["fa_per_hour"]} for p in sweep],
    }


def plot_pair_det(pairs, scores: dict[str, float], path: str) -> None:
    """DET curves (probit axes) of positive vs hard and vs easy, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    fig, ax = plt.subplots(figsize=(5, 5))
    pos = [scores[p.id] for p in pairs if p.kind == "positive"]
    clip = 1e-4
    for kind in ("hard", "easy"):
        neg = [scores[p.id] for p in pairs if p.kind == kind]
        if not pos or not neg:
            continue
        far, frr, _ = det_curve(pos + neg, [1] * len(pos) + [0] * len(neg))
        rate, _ = eer(pos + neg, [1] * len(pos) + [0] * len(neg))
        ax.plot(norm.ppf(np.clip(far, clip, 1 - clip)), norm.ppf(np.clip(frr, clip, 1 - clip)),
                label=f"positive vs {kind} (EER {rate:.1%})")
    ticks = [0.001, 0.01, 0.05, 0.2, 0.5, 0.8]
    ax.set_xticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("false reject rate")
    ax.set_title("pair verification DET")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_stream_det(result: dict, path: str) -> None:
    """FRR against FA/h over the threshold sweep of ``stream_metrics``, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    det = sorted(result["det"], key=lambda p: p["fa_per_hour"])
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.step([max(p["fa_per_hour"], 1e-2) for p in det], [p["frr"] for p in det], where="post")
    for target in (0.5, 1.0):
        ax.axvline(target, color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("false accepts per hour")
    ax.set_ylabel("false reject rate")
    ax.set_ylim(0, 1)
    ax.set_title("streaming detection DET")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
