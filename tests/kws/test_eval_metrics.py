"""Metrics against hand-computed examples, and against brute force on random data."""

from __future__ import annotations

import numpy as np
import pytest

from kws.eval.manifest import Event, Pair, StreamItem
from kws.eval.metrics import det_curve, eer, match_detections, pair_metrics, roc_auc, stream_metrics


def test_auc_by_hand():
    # positives 0.9, 0.8, 0.4 vs negatives 0.7, 0.3, 0.2: 8 of 9 orderings right
    assert roc_auc([0.9, 0.8, 0.4, 0.7, 0.3, 0.2], [1, 1, 1, 0, 0, 0]) == pytest.approx(8 / 9)
    assert roc_auc([0.5, 0.5], [1, 0]) == 0.5  # a tie counts one half
    assert roc_auc([0.1, 0.9], [1, 0]) == 0.0
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [1, 1])


def test_auc_matches_brute_force():
    rng = np.random.default_rng()
    s = np.round(rng.normal(size=300), 1)  # rounding makes ties
    y = rng.integers(0, 2, 300)
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert roc_auc(s, y) == pytest.approx(brute)


def test_eer_by_hand():
    # at threshold 0.7: FAR 1/3 (0.7 accepted), FRR 1/3 (0.4 rejected)
    rate, thr = eer([0.9, 0.8, 0.4, 0.7, 0.3, 0.2], [1, 1, 1, 0, 0, 0])
    assert rate == pytest.approx(1 / 3) and thr == 0.7
    # unbalanced: FAR 1/2 -> 0 while FRR stays 1/3 between t=0.5 and t=0.8: crossing at 1/3
    rate, _ = eer([0.9, 0.8, 0.3, 0.5, 0.1], [1, 1, 1, 0, 0])
    assert rate == pytest.approx(1 / 3)
    assert eer([1.0, 0.0], [1, 0])[0] == 0.0  # perfectly separated


def test_det_curve_endpoints():
    far, frr, thr = det_curve([0.2, 0.4, 0.6], [1, 0, 1])
    assert far[0] == 1.0 and frr[0] == 0.0 and far[-1] == 0.0 and frr[-1] == 1.0
    assert np.all(np.diff(far) <= 0) and np.all(np.diff(frr) >= 0)


def test_pair_metrics_splits_hard_and_easy():
    pairs = [Pair("p1", "a.wav", "x", 1, "positive"), Pair("p2", "b.wav", "y", 1, "positive"),
             Pair("h1", "a.wav", "x2", 0, "hard"), Pair("h2", "b.wav", "y2", 0, "hard"),
             Pair("e1", "a.wav", "z", 0, "easy"), Pair("e2", "b.wav", "w", 0, "easy")]
    scores = {"p1": 0.9, "p2": 0.6, "h1": 0.7, "h2": 0.5, "e1": 0.1, "e2": 0.2}
    m = pair_metrics(pairs, scores)
    assert m["positive_vs_hard"]["auc"] == pytest.approx(0.75)
    assert m["positive_vs_easy"]["auc"] == 1.0 and m["positive_vs_easy"]["eer"] == 0.0
    with pytest.raises(ValueError, match="no score"):
        pair_metrics(pairs, {k: v for k, v in scores.items() if k != "e2"})


def _stream():
    st = StreamItem("s1", "s1.wav", ["a", "b"], [Event("a", 10, 11), Event("a", 20, 21), Event("b", 30, 31)])
    st.duration = 3600.0
    dets = [
        {"id": "s1", "keyword": "a", "time": 11.5, "score": 0.9},   # hit (<= end + 1 s)
        {"id": "s1", "keyword": "a", "time": 11.8, "score": 0.8},   # second hit on one event: false accept
        {"id": "s1", "keyword": "a", "time": 22.5, "score": 0.7},   # 1.5 s after the end: false accept
        {"id": "s1", "keyword": "b", "time": 30.5, "score": 0.4},   # hit, before the end
        {"id": "s1", "keyword": "b", "time": 50.0, "score": 0.95},  # false accept
    ]
    return [st], dets


def test_stream_matching_by_hand():
    streams, dets = _stream()
    m = match_detections(streams, dets, threshold=0.5)
    assert (m["events"], m["hits"], m["misses"], m["false_accepts"]) == (3, 1, 2, 3)
    m = match_detections(streams, dets)
    assert (m["hits"], m["false_accepts"]) == (2, 3)
    assert sorted(m["latencies"]) == pytest.approx([-0.5, 0.5])


def test_frr_at_fixed_fa_per_hour_by_hand():
    streams, dets = _stream()
    r = stream_metrics(streams, dets, threshold=0.5)
    assert r["at_threshold"]["frr"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["at_threshold"]["fa_per_hour"] == pytest.approx(3.0)
    # 0.5 FA/h in one hour allows no false accept: only thresholds above 0.95, all events missed
    assert r["frr_at_fa_per_hour"]["0.5"]["frr"] == 1.0
    # 1 FA/h: threshold 0.9 keeps the hit at 11.5 s and one false accept
    assert r["frr_at_fa_per_hour"]["1.0"]["frr"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["latency"]["median"] == pytest.approx(0.5)  # at threshold 0.5 only the 11.5 s hit


def test_edit_kind_and_hard_auc_by_edit():
    from kws.eval.manifest import Pair
    from kws.eval.metrics import edit_kind, hard_by_edit

    spell = {"lights on": "L AY T S AA N", "lights an": "L AY T S AO N", "lights on d": "L AY T S AA N D",
             "lights o": "L AY T S AA", "ights on": "AY T S AA N", "lies on": "L AY S AA N",
             "lied zon": "L AY D Z AA N"}

    def phones(text):
        return spell[text].split(" ")

    kinds = {t: edit_kind(phones("lights on"), phones(t)) for t in spell if t != "lights on"}
    assert kinds == {"lights an": "substitution", "lights on d": "insertion", "lights o": "deletion-end",
                     "ights on": "deletion-start", "lies on": "deletion-middle", "lied zon": "other"}
    pairs, scores = [], {}
    for clip, (hard, pos, neg) in enumerate([("lights o", 0.9, 0.1), ("lied zon", 0.8, 0.95),
                                             ("ights on", 0.7, 0.2), ("lied zon", 0.6, 0.65),
                                             ("lies on", 0.5, 0.1)]):
        pairs += [Pair(f"{clip}p", f"c{clip}", "lights on", 1, "positive"), Pair(f"{clip}h", f"c{clip}", hard, 0, "hard")]
        scores[f"{clip}p"], scores[f"{clip}h"] = pos, neg
    m = hard_by_edit(pairs, scores, phones)  # one clip per deletion side and in the middle: too few for an AUC
    assert m == {"deletion-edge": {"auc": 1.0, "n_clips": 2}, "other": {"auc": 0.25, "n_clips": 2}}
    pairs += [Pair("5p", "c5", "lights on", 1, "positive"), Pair("5h", "c5", "ights on", 0, "hard")]
    scores["5p"], scores["5h"] = 0.3, 0.4  # a second start deletion, scored above its positive
    m = hard_by_edit(pairs, scores, phones)
    assert m["deletion-start"] == {"auc": 0.75, "n_clips": 2}  # pooled: 0.7 > 0.2, 0.4; 0.3 > 0.2 only
    assert m["deletion-edge"]["n_clips"] == 3 and "deletion-end" not in m
