"""score / detect / eval / bench through the CLI with the PocketSphinx baseline, on real speech."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kws.eval import manifest as M
from services.cli import main

GOFORWARD = Path("/usr/share/pocketsphinx/test/data/goforward.raw")
pytest.importorskip("pocketsphinx")
if not GOFORWARD.exists():
    pytest.skip("needs Debian pocketsphinx-testdata (goforward.raw)", allow_module_level=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ps")
    speech = np.fromfile(GOFORWARD, dtype=np.int16).astype(np.float32) / 32768.0  # "go forward ten meters"
    # stored at 8 kHz stereo: the commands must convert to 16 kHz mono themselves
    from kws.data.espeak import resample

    M.write_audio(root / "clips" / "gf.wav", np.stack([resample(speech, 16000, 8000)] * 2, axis=1), 8000)
    M.write_jsonl(root / "pairs.jsonl", [
        {"id": "pos", "audio": "clips/gf.wav", "text": "go forward ten meters", "label": 1, "kind": "positive"},
        {"id": "hard", "audio": "clips/gf.wav", "text": "go backward ten meters", "label": 0, "kind": "hard"},
        {"id": "easy", "audio": "clips/gf.wav", "text": "pepperoni pizza", "label": 0, "kind": "easy"},
    ])
    gap = np.zeros(16000 * 3, np.float32)
    stream = np.concatenate([gap, speech, gap, speech, gap])
    M.write_audio(root / "streams" / "s1.wav", stream)
    t1 = 3.0 + 2.786  # the second copy starts after the first and a gap
    M.write_jsonl(root / "streams.jsonl", [{
        "id": "s1", "audio": "streams/s1.wav", "keywords": ["go forward", "lights on"],
        "events": [{"keyword": "go forward", "start": 3.45, "end": 4.2},
                   {"keyword": "go forward", "start": t1 + 3.45, "end": t1 + 4.2}]}])
    return root


def test_score_ranks_the_true_text_first(data):
    assert main(["kws", "score", str(data / "pairs.jsonl"), "--out", str(data / "scores.jsonl"),
                 "--model", "pocketsphinx", "--no-progress"]) == 0
    s = M.read_scores(data / "scores.jsonl")
    assert set(s) == {"pos", "hard", "easy"}
    assert s["pos"] > s["hard"] > s["easy"]


def test_detect_finds_both_occurrences_without_look_ahead(data):
    assert main(["kws", "detect", str(data / "streams.jsonl"), "--out", str(data / "det.jsonl"),
                 "--model", "pocketsphinx", "--no-progress"]) == 0
    dets = M.read_detections(data / "det.jsonl")
    gf = sorted(d["time"] for d in dets if d["keyword"] == "go forward")
    assert len(gf) >= 2
    (st,) = M.read_streams(data / "streams.jsonl")
    for ev in st.events:
        assert any(ev.start <= t <= ev.end + 1.0 for t in gf)
    assert all(d["time"] <= 14.0 for d in dets)  # never later than the audio


def test_eval_writes_results_and_plots(data):
    if not (data / "det.jsonl").exists() or not (data / "scores.jsonl").exists():
        pytest.skip("runs after score and detect")
    out = data / "res" / "results.json"
    assert main(["kws", "eval", "--pairs", str(data / "pairs.jsonl"), "--scores", str(data / "scores.jsonl"),
                 "--streams", str(data / "streams.jsonl"), "--detections", str(data / "det.jsonl"),
                 "--out", str(out), "--threshold", "-5"]) == 0
    res = json.loads(out.read_text())
    assert res["pairs"]["positive_vs_hard"]["auc"] == 1.0
    assert res["streams"]["events"] == 2 and res["streams"]["at_threshold"]["frr"] == 0.0
    assert (data / "res" / "results_pairs_det.png").stat().st_size > 1000
    assert (data / "res" / "results_streams_det.png").stat().st_size > 1000


def test_missing_model_dir_is_a_clear_error(data, tmp_path, capsys):
    assert main(["kws", "score", str(data / "pairs.jsonl"), "--out", str(tmp_path / "s.jsonl"),
                 "--model", str(tmp_path / "nope"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
