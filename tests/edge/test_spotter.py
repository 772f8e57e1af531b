"""The edge Spotter/Stream API (docs/architecture.md) on a real onnxruntime session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.scoring import keyword_rows, score_frames
from edge.spotter import Detection, Spotter
from kws.export import export_untrained

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "kws" / "default"


@pytest.fixture(scope="module")
def spotter(tmp_path_factory):
    return Spotter.from_dir(export_untrained(tmp_path_factory.mktemp("kws")), num_threads=1)


def _run(sp, stream, x, rate, chunk):
    for i in range(0, len(x), chunk):
        stream.accept_waveform(rate, x[i : i + chunk])
        while sp.is_ready(stream):
            sp.decode(stream)


def test_enroll_and_thresholds(spotter):
    kw = spotter.enroll("Lights  ON")
    assert kw.text == "lights on" and kw.phonemes == ("L", "AY", "T", "S", "AA", "N")
    assert 0 < kw.auto_threshold < 1 and kw.threshold == spotter.default_threshold
    s = spotter.create_stream(["lights on", ("stop music", 0.7)])
    assert s.keywords == ["lights on", "stop music"] and s._thr == [kw.threshold, 0.7]
    for bad in ("", "   ", "字"):
        with pytest.raises(ValueError):
            spotter.enroll(bad)
    with pytest.raises(ValueError):
        s.add_keyword("open door", threshold=1.5)
    # cached per text; use_cache=False (what `kws bench` times) enrolls afresh, to the same result
    again, fresh = spotter.enroll("lights on"), spotter.enroll("lights on", use_cache=False)
    assert again is kw and fresh is not kw and fresh == kw


def test_streaming_equals_whole_clip_encoding(spotter):
    rng = np.random.default_rng()
    x = (rng.standard_normal(16000 * 2) * 0.05).astype(np.float32)
    s = spotter.create_stream()
    got = []
    orig = s.consume
    s.consume = lambda emb, logp: (got.append(emb.copy()), orig(emb, logp))
    _run(spotter, s, x, 16000, 1234)
    s.input_finished()
    while spotter.is_ready(s):
        spotter.decode(s)
    emb, _ = spotter.encode(x)
    np.testing.assert_allclose(np.concatenate(got), emb, atol=1e-4)
    assert s.steps == len(emb)


def test_live_keywords_rates_and_results(spotter):
    rng = np.random.default_rng()
    s = spotter.create_stream([("lights on", 0.01)])  # a tiny threshold: fires on anything
    x = (rng.standard_normal(44100 * 3) * 0.1).astype(np.float32)
    _run(spotter, s, x[: 44100 * 2], 44100, 4410)
    s.add_keyword("open the door", threshold=0.01)
    assert s.remove_keyword("lights on") and not s.remove_keyword("lights on")
    _run(spotter, s, x[44100 * 2 :], 44100, 4410)
    res = s.results()
    assert res and all(isinstance(d, Detection) for d in res) and s.results() == []
    by_kw = {}
    for d in res:
        # fired at most PEAK_HOLD frames + 1 after the peak it reports
        assert d.start_time <= d.end_time < d.fired_time <= d.end_time + 0.121 and d.fired_time <= 3.0 + 1e-6
        assert d.threshold <= d.score <= 1
        by_kw.setdefault(d.keyword, []).append(d.fired_time)
    for times in by_kw.values():  # refractory period between detections of one keyword
        assert all(b - a >= 1.0 - 1e-6 for a, b in zip(times, times[1:], strict=False))
    assert max(by_kw.get("lights on", [0])) <= 2.0 + 1e-6 and min(by_kw.get("open the door", [9])) >= 2.0 - 1e-6
    assert 48000 - 1000 < s.samples_in <= 48000  # the resampler holds back its filter delay
    s.input_finished()
    assert abs(s.samples_in - 48000) < 50
    s2 = spotter.create_stream(["lights on"])
    _run(spotter, s2, x[:8000], 8000, 800)
    with pytest.raises(ValueError):
        s2.accept_waveform(16000, np.array([np.nan], np.float32))
    with pytest.raises(ValueError):
        s2.accept_waveform(96000, np.zeros(10, np.float32))


def test_batched_decode_matches_single(spotter):
    rng = np.random.default_rng()
    xs = [(rng.standard_normal(16000) * 0.1).astype(np.float32) for _ in range(3)]
    single = []
    for x in xs:
        s = spotter.create_stream([("lights on", 0.3), ("stop", 0.3)])
        _run(spotter, s, x, 16000, 1600)
        single.append((s.cache.copy(), [(d.keyword, round(d.score, 4)) for d in s.results()]))
    streams = [spotter.create_stream([("lights on", 0.3), ("stop", 0.3)]) for _ in xs]
    for i in range(0, 16000, 1600):
        for s, x in zip(streams, xs, strict=True):
            s.accept_waveform(16000, x[i : i + 1600])
        spotter.decode_streams(streams)
    for s, (cache, dets) in zip(streams, single, strict=True):
        np.testing.assert_allclose(s.cache, cache, atol=1e-4)
        assert [(d.keyword, round(d.score, 4)) for d in s.results()] == dets


def test_score_pair_range(spotter):
    x = (np.random.default_rng().standard_normal(16000) * 0.1).astype(np.float32)
    v = spotter.score_pair(x, 16000, "lights on")
    assert 0.0 <= v <= 1.0
    assert spotter.score_pairs(x, 16000, ["lights on", "stop"])[0] == pytest.approx(v, abs=1e-6)


def test_pairs_are_scored_inside_quiet_noise_not_digital_zeros(spotter):
    from edge import spotter as module

    for pad in (module._PAD_BEFORE, module._PAD_AFTER):
        assert len(pad) >= 1600 and (pad != 0).all() and 1e-4 < np.sqrt(np.mean(pad**2)) < 1e-3
    x = (np.random.default_rng(3).standard_normal(8000) * 0.1).astype(np.float32)
    emb, logp = spotter.encode(np.concatenate([module._PAD_BEFORE, x, module._PAD_AFTER]))
    q, qi, mask, n = keyword_rows(spotter.table_emb, [spotter.phoneme_ids("stop")])
    want = float(score_frames(spotter.matcher, q, qi, mask, n, emb, logp).max())
    assert spotter.score_pair(x, 16000, "stop") == pytest.approx(want, abs=1e-6)
    assert spotter.score_pair(x, 16000, "stop") == spotter.score_pair(x, 16000, "stop")  # fixed pads


def test_shipped_model_separates_spoken_text():
    if not (DEFAULT / "encoder.onnx").exists():
        pytest.skip("no shipped model in models/kws/default")
    espeak = pytest.importorskip("kws.data.espeak")
    sp = Spotter.from_dir(DEFAULT)
    pos, neg = [], []
    for text, other in (("turn on the lights", "open the door"), ("play some music", "call my mother")):
        utt = espeak.synthesize(text, voice="en-us+f2")
        pos.append(sp.score_pair(utt.audio, 16000, text))
        neg.append(sp.score_pair(utt.audio, 16000, other))
    assert min(pos) > max(neg)


def test_adding_a_longer_keyword_keeps_the_others_state(spotter):
    rng = np.random.default_rng()
    x = (rng.standard_normal(16000 * 3) * 0.1).astype(np.float32)
    alone = spotter.create_stream([("stop", 0.05)])
    both = spotter.create_stream([("stop", 0.05)])
    _run(spotter, alone, x, 16000, 1600)
    _run(spotter, both, x[:24000], 16000, 1600)
    both.add_keyword("turn off the kitchen lights please", threshold=0.05)
    _run(spotter, both, x[24000:], 16000, 1600)
    a = [(d.fired_time, round(d.score, 5)) for d in alone.results()]
    b = [(d.fired_time, round(d.score, 5)) for d in both.results() if d.keyword == "stop"]
    assert a == b


def test_keywords_are_spotted_under_every_pronunciation(spotter):
    """A pair and a stream both score a keyword by its best pronunciation (edge.spotter.PRONUNCIATIONS)."""
    from edge import spotter as module

    kw = spotter.enroll("the stop")
    assert kw.pronunciations[0] == kw.phoneme_ids and len(kw.pronunciations) == 2
    assert kw.pronunciations[1] == tuple(spotter.phoneme_ids("thee stop"))  # DH IY
    x = (np.random.default_rng(5).standard_normal(16000) * 0.1).astype(np.float32)
    emb, logp = spotter.encode(np.concatenate([module._PAD_BEFORE, x, module._PAD_AFTER]))
    q, qi, mask, n = keyword_rows(spotter.table_emb, [list(v) for v in kw.pronunciations])
    per_row = score_frames(spotter.matcher, q, qi, mask, n, emb, logp)
    assert spotter.score_pair(x, 16000, "the stop") == pytest.approx(float(per_row.max()), abs=1e-6)
    # a stream: the keyword's rows sit side by side and its detections carry the best row's score
    s = spotter.create_stream([("the stop", 0.01), ("dog", 0.01)])
    assert s._spans == [(0, 2), (2, 3)]
    s.remove_keyword("the stop")
    assert s._spans == [(0, 1)] and s._dsp.n.tolist() == [len(spotter.phoneme_ids("dog"))]
    s = spotter.create_stream([("the stop", 0.01)])
    emb, logp = spotter.encode(x)
    s.consume(emb, logp)
    per_row = score_frames(spotter.matcher, q, qi, mask, n, emb, logp)
    dets = s.results()
    assert dets, "threshold 0.01 on noise should fire"
    best = per_row.max(axis=0)
    assert all(np.abs(best - d.score).min() < 1e-5 for d in dets)
    # on this clip the second pronunciation scores higher: the stream reports a score the first never reaches
    assert max(d.score for d in dets) > per_row[0].max() + 1e-5
