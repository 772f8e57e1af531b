"""score / detect / bench through the Spotter backend (an untrained exported model: the plumbing)."""

from __future__ import annotations

import numpy as np
import pytest

from kws.eval import manifest as M
from services.cli import main

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from kws.export import export_untrained

    return str(export_untrained(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from kws.data.espeak import synthesize

    root = tmp_path_factory.mktemp("sp")
    a = synthesize("lights on", voice="en-us")
    b = synthesize("open the door", voice="en-gb-x-rp")
    M.write_audio(root / "a.wav", a.audio)
    M.write_audio(root / "b.wav", b.audio)
    M.write_jsonl(root / "pairs.jsonl", [
        {"id": "1", "audio": "a.wav", "text": "lights on", "label": 1, "kind": "positive"},
        {"id": "2", "audio": "a.wav", "text": "light on", "label": 0, "kind": "hard"},
        {"id": "3", "audio": "b.wav", "text": "open the door", "label": 1, "kind": "positive"},
        {"id": "4", "audio": "b.wav", "text": "pepperoni", "label": 0, "kind": "easy"},
    ])
    gap = np.zeros(16000, np.float32)
    x = np.concatenate([gap, a.audio, gap, b.audio, gap])
    M.write_audio(root / "s.wav", x)
    M.write_jsonl(root / "streams.jsonl", [{"id": "s", "audio": "s.wav", "keywords": ["lights on", "open the door"],
                                            "events": [{"keyword": "lights on", "start": 1.0 + a.word_times[0][0],
                                                        "end": 1.0 + a.word_times[-1][1]}]}])
    return root, len(x) / 16000


def test_score_every_trial(model_dir, data):
    root, _ = data
    assert main(["kws", "score", str(root / "pairs.jsonl"), "--out", str(root / "scores.jsonl"),
                 "--model", model_dir, "--no-progress"]) == 0
    s = M.read_scores(root / "scores.jsonl")
    assert set(s) == {"1", "2", "3", "4"} and all(np.isfinite(v) for v in s.values())


def test_detect_streams_in_100ms_chunks(model_dir, data):
    from kws.eval.backends import load_backend

    root, seconds = data
    backend = load_backend(model_dir)
    timings: list[float] = []
    x = M.load_audio(root / "s.wav")
    dets = backend.detect(x, 16000, ["lights on", "open the door"], threshold=0.01, timings=timings)
    assert len(timings) == int(np.ceil(len(x) / 1600))  # one accept/decode round per 100 ms chunk
    assert all(d["keyword"] in ("lights on", "open the door") and 0 <= d["time"] <= seconds for d in dets)
    assert main(["kws", "detect", str(root / "streams.jsonl"), "--out", str(root / "det.jsonl"),
                 "--model", model_dir, "--threshold", "0.01", "--no-progress"]) == 0
    assert len(M.read_detections(root / "det.jsonl")) == len(dets)


def test_bench_reports_speed(model_dir, tmp_path):
    import json

    out = tmp_path / "bench.json"
    assert main(["kws", "bench", "--model", model_dir, "--seconds", "3", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["keywords"] == 10 and rep["rtf"] > 0 and rep["model_bytes"] > 0
    assert rep["chunk_latency_ms_p99"] >= rep["chunk_latency_ms_median"] > 0


def test_calibrate_sets_a_gate_that_keeps_true_keywords(model_dir, data, tmp_path):
    import shutil

    from edge.scoring import NEG, MatcherWeights
    from edge.spotter import Spotter

    root, _ = data
    m = tmp_path / "m"
    shutil.copytree(model_dir, m)
    assert MatcherWeights.load(m / "matcher.npz").gate == NEG
    x = M.load_audio(root / "a.wav")
    before = Spotter.from_dir(m).score_pair(x, 16000, "lights on")
    assert main(["kws", "calibrate", str(m), "--pairs", str(root / "pairs.jsonl"), "--margin", "0.05"]) == 0
    gate = MatcherWeights.load(m / "matcher.npz").gate
    assert NEG < gate < 10
    # the gate sits below the partition score of the true keywords: their scores do not change
    assert Spotter.from_dir(m).score_pair(x, 16000, "lights on") == pytest.approx(before, abs=1e-6)
    with pytest.raises(ValueError, match="no positive"):
        from kws.devset import gate_examples

        (root / "neg.jsonl").write_text('{"id": "x", "audio": "a.wav", "text": "pepperoni", "label": 0, '
                                        '"kind": "easy"}\n')
        gate_examples(m, root / "neg.jsonl")


def test_default_model_works_from_any_working_directory(data, tmp_path, monkeypatch):
    from services.shipped import KWS_MODEL

    if not (KWS_MODEL / "encoder.onnx").exists():
        pytest.skip("no shipped model in this checkout")
    root, _ = data
    monkeypatch.chdir(tmp_path)  # the held-out harness need not run from the checkout
    assert main(["kws", "score", str(root / "pairs.jsonl"), "--out", "scores.jsonl", "--no-progress"]) == 0
    assert set(M.read_scores(tmp_path / "scores.jsonl")) == {"1", "2", "3", "4"}


def test_bad_trials_are_one_line_errors_with_exit_code_2(model_dir, data, tmp_path, capsys):
    root, _ = data
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    for audio, text, expect in ((str(root / "a.wav"), "@@@ ###", "trial t: cannot score"),
                                ("junk.wav", "lights on", "cannot read audio")):
        M.write_jsonl(tmp_path / "p.jsonl", [{"id": "t", "audio": audio, "text": text, "label": 1,
                                              "kind": "positive"}])
        rc = main(["kws", "score", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "s.jsonl"),
                   "--model", model_dir, "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and expect in err and "Traceback" not in err
        assert not (tmp_path / "s.jsonl").exists()  # nothing half-written
    M.write_jsonl(tmp_path / "st.jsonl", [{"id": "s1", "audio": str(root / "a.wav"), "keywords": ["lights on", "@@@"],
                                           "events": []}])
    rc = main(["kws", "detect", str(tmp_path / "st.jsonl"), "--out", str(tmp_path / "d.jsonl"), "--model", model_dir,
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "stream s1: phonemize: no pronounceable" in err and not (tmp_path / "d.jsonl").exists()


def test_detect_thresholds_are_the_edge_services(model_dir):
    """`kws detect` without --threshold enrolls keywords the way the edge service does by default."""
    from kws.eval.backends import SpotterBackend
    from services.edge.settings import EdgeSettings

    b = SpotterBackend(model_dir)
    assert b.spotter.threshold_mode == EdgeSettings.model_fields["threshold_mode"].default
    kw = b.spotter.enroll("lights on")
    assert kw.threshold == kw.auto_threshold >= b.spotter.default_threshold
