"""`wakeline kws score|detect` accept any WAV a benchmark may hold (shared/specs/kws-eval.md).

Every sample format soundfile writes to WAV (8-bit unsigned up to 64-bit float, plain and
WAVE_FORMAT_EXTENSIBLE headers), 1/2/6 channels, 8-96 kHz, clips shorter than a frame, silence
and clipping all score (same audio -> nearly the same score); a missing, non-WAV or NaN file is a
one-line error naming the file with exit code 2. Uses the shipped model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kws.eval import manifest as M
from services.cli import main
from services.shipped import KWS_MODEL

sf = pytest.importorskip("soundfile")
pytest.importorskip("onnxruntime")
pytest.importorskip("soxr")

REPO = Path(__file__).resolve().parents[2]
REAL_CLIP = REPO / "data/kws/real/clips/kl-en-car.wav"  # a person saying "car" (built by `make`)
SUBTYPES = ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")
RATES = (8000, 11025, 16000, 22050, 44100, 48000, 96000)
CLOSE = 0.05  # |score difference| allowed for the same audio in another format


@pytest.fixture(scope="module")
def model_dir():
    if not (KWS_MODEL / "encoder.onnx").exists():
        pytest.skip("no shipped model in this checkout")
    return str(KWS_MODEL)


@pytest.fixture(scope="module")
def speech():
    """(16 kHz mono speech, the text it says, a text it does not say)."""
    if REAL_CLIP.exists():
        x, sr = sf.read(REAL_CLIP, dtype="float32")
        assert sr == 16000 and x.ndim == 1
        return x, "car", "say"
    espeak = pytest.importorskip("kws.data.espeak")
    return espeak.synthesize("lights on", voice="en-us").audio, "lights on", "pepperoni"


def _at(x: np.ndarray, rate: int) -> np.ndarray:
    import soxr

    return x if rate == 16000 else soxr.resample(x, 16000, rate, quality="VHQ").astype(np.float32)


def _write(path: Path, x: np.ndarray, rate: int, subtype: str, channels: int = 1, fmt: str = "WAV") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([x] * channels, axis=1) if channels > 1 else x, rate, subtype=subtype, format=fmt)
    return path.name


@pytest.fixture(scope="module")
def scored(model_dir, speech, tmp_path_factory):
    """One `kws score` run over every variant (folder and file names with spaces); id -> score."""
    x, text, other = speech
    root = tmp_path_factory.mktemp("fmt") / "bench dir"
    clips = {}
    for st in SUBTYPES:
        clips[f"16k {st}"] = _write(root / "clips" / f"16k {st}.wav", x, 16000, st)
        clips[f"16k {st} ext"] = _write(root / "clips" / f"16k {st} ext.wav", x, 16000, st, fmt="WAVEX")
    for rate in RATES:
        y = _at(x, rate)
        clips[f"{rate} mono"] = _write(root / "clips" / f"{rate} mono.wav", y, rate, "PCM_16")
        clips[f"{rate} stereo"] = _write(root / "clips" / f"{rate} stereo.wav", y, rate, "FLOAT", channels=2)
        clips[f"{rate} 6ch"] = _write(root / "clips" / f"{rate} 6ch.wav", y, rate, "PCM_24", channels=6, fmt="WAVEX")
    clips["10 ms"] = _write(root / "clips" / "10 ms.wav", x[8000:8160], 16000, "PCM_16")
    clips["1 sample 48k"] = _write(root / "clips" / "1 sample 48k.wav", x[:1], 48000, "FLOAT")
    clips["silence"] = _write(root / "clips" / "silence.wav", np.zeros(16000, np.float32), 16000, "PCM_16")
    clips["clipped"] = _write(root / "clips" / "clipped.wav", np.clip(4 * x / np.abs(x).max(), -1, 1), 16000, "PCM_16")
    rows = [{"id": k, "audio": f"clips/{v}", "text": text, "label": 1, "kind": "positive"} for k, v in clips.items()]
    rows += [{"id": f"{k} easy", "audio": f"clips/{clips[k]}", "text": other, "label": 0, "kind": "easy"}
             for k in ("16k PCM_16", "16k PCM_U8", "48000 stereo", "96000 6ch")]
    M.write_jsonl(root / "pairs.jsonl", rows)
    out = root / "out dir" / "scores.jsonl"
    assert main(["kws", "score", str(root / "pairs.jsonl"), "--out", str(out), "--model", model_dir,
                 "--no-progress"]) == 0
    scores = M.read_scores(out)
    assert list(scores) == [r["id"] for r in rows]  # every trial, in order: nothing skipped
    assert all(np.isfinite(v) for v in scores.values())
    return scores


def test_every_sample_format_and_header_scores_the_same(scored):
    ref = scored["16k PCM_16"]
    assert ref > scored["16k PCM_16 easy"] + 0.3  # the clip really is decoded as speech
    for st in SUBTYPES:
        tol = 2 * CLOSE if st == "PCM_U8" else CLOSE  # 8 bits add audible quantization noise
        for key in (f"16k {st}", f"16k {st} ext"):
            assert abs(scored[key] - ref) < tol, (key, scored[key], ref)
    assert scored["16k PCM_U8"] > scored["16k PCM_U8 easy"] + 0.3  # unsigned 8-bit read with its offset


@pytest.mark.parametrize("rate", RATES)
def test_every_rate_and_channel_count_scores(scored, rate):
    ref = scored["16k PCM_16"]
    mono = scored[f"{rate} mono"]
    # duplicated channels average back to the mono signal
    assert abs(scored[f"{rate} stereo"] - mono) < CLOSE and abs(scored[f"{rate} 6ch"] - mono) < CLOSE
    if rate >= 16000:  # no band lost: the same audio as the 16 kHz reference
        assert abs(mono - ref) < CLOSE, (rate, mono, ref)
    else:  # telephone band: still clearly the keyword
        assert mono > ref - 0.3


def test_48k_stereo_float_matches_16k_pcm16(scored):
    assert abs(scored["48000 stereo"] - scored["16k PCM_16"]) < CLOSE
    assert abs(scored["16k FLOAT"] - scored["16k PCM_16"]) < CLOSE
    assert scored["48000 stereo"] > scored["48000 stereo easy"] + 0.3
    assert scored["96000 6ch"] > scored["96000 6ch easy"] + 0.3


def test_degenerate_clips_score_low_without_crashing(scored):
    ref = scored["16k PCM_16"]
    for key in ("10 ms", "1 sample 48k", "silence"):
        assert 0.0 <= scored[key] < ref - 0.3, (key, scored[key])
    assert np.isfinite(scored["clipped"])


def test_load_audio_resamples_with_the_edge_runtime(speech, tmp_path):
    """The CLI converts rates with edge.features.resample (the edge's soxr path), not a second resampler."""
    from edge.features import resample

    x = _at(speech[0], 44100)
    _write(tmp_path / "a.wav", x, 44100, "FLOAT", channels=2)
    np.testing.assert_array_equal(M.load_audio(tmp_path / "a.wav"), resample(x, 44100, 16000))


def test_detect_accepts_any_rate_and_channel_count(model_dir, speech, tmp_path):
    x, text, _ = speech
    gap = np.zeros(16000, np.float32)
    sig = np.concatenate([gap, x, gap])
    root = tmp_path / "streams dir"
    variants = {"16k": (16000, "PCM_16", 1, "WAV"), "48k stereo": (48000, "FLOAT", 2, "WAV"),
                "96k 6ch": (96000, "PCM_24", 6, "WAVEX"), "22k u8": (22050, "PCM_U8", 1, "WAVEX"),
                "44k double": (44100, "DOUBLE", 2, "WAV")}
    # the keyword's words within [1 s, 1 s + clip]: a hit fires in [start, end + 1]
    event = {"keyword": text, "start": 1.0, "end": 1.0 + len(x) / 16000}
    rows = [{"id": k, "audio": _write(root / f"{k}.wav", _at(sig, r), r, st, ch, fmt), "keywords": [text],
             "events": [event]} for k, (r, st, ch, fmt) in variants.items()]
    rows.append({"id": "10 ms", "audio": _write(root / "10 ms.wav", x[8000:8080], 8000, "PCM_16"),
                 "keywords": [text], "events": []})
    rows.append({"id": "silence", "audio": _write(root / "silence.wav", gap, 44100, "PCM_16", 2),
                 "keywords": [text], "events": []})
    M.write_jsonl(root / "streams.jsonl", rows)
    out = root / "det.jsonl"
    assert main(["kws", "detect", str(root / "streams.jsonl"), "--out", str(out), "--model", model_dir,
                 "--threshold", "0.3", "--no-progress"]) == 0
    dets = M.read_detections(out)
    first = {}
    for d in dets:
        first.setdefault(d["id"], d)
    assert set(first) == set(variants), dets  # every speech stream fires, the short and silent ones do not
    for k, d in first.items():
        assert d["keyword"] == text and event["start"] <= d["time"] <= event["end"] + 1.0, (k, d)
        assert abs(d["time"] - first["16k"]["time"]) <= 0.1 and abs(d["score"] - first["16k"]["score"]) < 0.1


@pytest.mark.parametrize("case", ["missing", "not a wav", "empty file", "NaN float"])
@pytest.mark.parametrize("command", ["score", "detect"])
def test_unreadable_audio_is_one_line_error_naming_the_file(model_dir, tmp_path, capsys, case, command):
    root = tmp_path / "bad dir"
    root.mkdir()
    name = f"{case}.wav"
    if case == "not a wav":
        (root / name).write_text("this is not audio\n")
    elif case == "empty file":
        (root / name).write_bytes(b"")
    elif case == "NaN float":
        y = np.full(1600, 0.1, np.float32)
        y[100] = np.nan
        sf.write(root / name, y, 16000, subtype="FLOAT")
    good = _write(root / "good.wav", np.zeros(1600, np.float32), 16000, "PCM_16")
    if command == "score":
        rows = [{"id": "ok", "audio": good, "text": "car", "label": 1, "kind": "positive"},
                {"id": "bad", "audio": name, "text": "car", "label": 1, "kind": "positive"}]
    else:
        rows = [{"id": "ok", "audio": good, "keywords": ["car"], "events": []},
                {"id": "bad", "audio": name, "keywords": ["car"], "events": []}]
    M.write_jsonl(root / "m.jsonl", rows)
    out = root / "out.jsonl"
    rc = main(["kws", command, str(root / "m.jsonl"), "--out", str(out), "--model", model_dir, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(root / name) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()  # no partial output that would silently drop the trial


def test_cli_needs_no_training_extras(model_dir, speech, tmp_path):
    """The real `wakeline` entry point scores 44.1 kHz stereo audio with scipy and torch unimportable
    (an edge-only install has neither)."""
    root = tmp_path / "no extras"
    _write(root / "a.wav", _at(speech[0], 44100), 44100, "PCM_16", channels=2)
    M.write_jsonl(root / "pairs.jsonl", [{"id": "a", "audio": "a.wav", "text": speech[1], "label": 1,
                                          "kind": "positive"}])
    M.write_jsonl(root / "streams.jsonl", [{"id": "a", "audio": "a.wav", "keywords": [speech[1]], "events": []}])
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('scipy', 'torch'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from services.cli import main\n"
        "rc = main(sys.argv[1:4] + ['--out', sys.argv[4], '--model', sys.argv[5], '--no-progress'])\n"
        "rc = rc or main(['kws', 'detect', sys.argv[6], '--out', sys.argv[7], '--model', sys.argv[5], '--no-progress'])\n"
        "sys.exit(rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, "kws", "score", str(root / "pairs.jsonl"), str(root / "s.jsonl"),
                        model_dir, str(root / "streams.jsonl"), str(root / "d.jsonl")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((root / "s.jsonl").read_text())["id"] == "a"
    assert (root / "d.jsonl").exists()
