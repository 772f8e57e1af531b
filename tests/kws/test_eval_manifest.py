"""Manifest reader/writer and audio loading (any rate and channel count -> 16 kHz mono)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from kws.eval import manifest as M


def test_pairs_roundtrip_and_relative_paths(tmp_path):
    rows = [{"id": "t1", "audio": "clips/1.wav", "text": "lights on", "label": 1, "kind": "positive"},
            {"id": "t2", "audio": "clips/1.wav", "text": "light on", "label": 0, "kind": "hard"},
            {"id": "t3", "audio": "clips/1.wav", "text": "pepperoni", "label": 0, "kind": "easy"}]
    assert M.write_jsonl(tmp_path / "sub" / "pairs.jsonl", rows) == 3
    pairs = M.read_pairs(tmp_path / "sub" / "pairs.jsonl")
    assert [p.kind for p in pairs] == ["positive", "hard", "easy"]
    assert pairs[0].audio == str((tmp_path / "sub" / "clips" / "1.wav").resolve())
    assert M.pairs_rows(pairs, tmp_path / "sub") == rows


@pytest.mark.parametrize("bad, msg", [
    ({"id": "t1", "audio": "a.wav", "text": "x", "label": 2, "kind": "positive"}, "label"),
    ({"id": "t1", "audio": "a.wav", "text": "x", "label": 0, "kind": "positive"}, "does not agree"),
    ({"id": "t1", "audio": "a.wav", "label": 1, "kind": "positive"}, "missing field 'text'"),
    ({"id": "t1", "audio": "a.wav", "text": "x", "label": 0, "kind": "medium"}, "kind"),
])
def test_pairs_validation(tmp_path, bad, msg):
    (tmp_path / "p.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(M.ManifestError, match=msg):
        M.read_pairs(tmp_path / "p.jsonl")


def test_duplicate_ids_and_bad_json_are_errors(tmp_path):
    row = {"id": "t1", "audio": "a.wav", "text": "x", "label": 1, "kind": "positive"}
    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(M.ManifestError, match="duplicate"):
        M.read_pairs(tmp_path / "p.jsonl")
    (tmp_path / "q.jsonl").write_text("{not json\n")
    with pytest.raises(M.ManifestError, match=":1: not JSON"):
        M.read_pairs(tmp_path / "q.jsonl")


def test_streams_roundtrip_and_validation(tmp_path):
    row = {"id": "s01", "audio": "streams/s01.wav", "keywords": ["power low", "research completed"],
           "events": [{"keyword": "power low", "start": 12.4, "end": 13.15}]}
    M.write_jsonl(tmp_path / "streams.jsonl", [row])
    (tmp_path / "streams").mkdir()
    sf.write(tmp_path / "streams" / "s01.wav", np.zeros(16000 * 3, np.int16), 16000)
    (st,) = M.fill_durations(M.read_streams(tmp_path / "streams.jsonl"))
    assert st.keywords == row["keywords"] and st.events[0] == M.Event("power low", 12.4, 13.15)
    assert st.duration == pytest.approx(3.0)
    row["events"][0]["keyword"] = "power high"
    M.write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(M.ManifestError, match="not among the keywords"):
        M.read_streams(tmp_path / "bad.jsonl")


def test_scores_and_detections_readers(tmp_path):
    M.write_jsonl(tmp_path / "s.jsonl", [{"id": "t1", "score": 0.5}, {"id": 7, "score": 1}])
    assert M.read_scores(tmp_path / "s.jsonl") == {"t1": 0.5, "7": 1.0}
    M.write_jsonl(tmp_path / "d.jsonl", [{"id": "s1", "keyword": "a", "time": 1.5, "score": 0.9}])
    assert M.read_detections(tmp_path / "d.jsonl")[0]["time"] == 1.5


@pytest.mark.parametrize("rate, channels", [(16000, 1), (44100, 2), (8000, 1), (22050, 3)])
def test_load_audio_converts_to_16k_mono(tmp_path, rate, channels):
    t = np.arange(int(rate * 0.5)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    x = np.stack([tone] * channels, axis=1)
    sf.write(tmp_path / "a.wav", x, rate, subtype="PCM_16")
    y = M.load_audio(tmp_path / "a.wav")
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == pytest.approx(8000, abs=2)
    # still a 440 Hz tone of the same level
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) * 16000 / len(y) - 440) < 5
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_unreadable_audio_is_a_clear_error(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"not audio")
    with pytest.raises(M.ManifestError, match="cannot read audio"):
        M.load_audio(tmp_path / "x.wav")
