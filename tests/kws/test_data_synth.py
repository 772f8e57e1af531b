"""A tiny synthesis run: eSpeak in process, alignments, voice-disjoint splits."""

from __future__ import annotations

import numpy as np
import pytest

from edge.phonemizer import PHONEMES
from kws.data.espeak import ESPEAK_TO_ARPABET, map_phone, random_params, synthesize, voices
from kws.data.utterance import align_labels


def test_voice_splits_are_disjoint():
    train, dev, test = (set(voices(s)) for s in ("train", "dev", "test"))
    assert len(train) > 200 and len(dev) > 50 and len(test) > 50
    assert not train & dev and not train & test and not dev & test
    variants = {v.split("+")[1] for v in train if "+" in v}
    assert not variants & {v.split("+")[1] for v in dev if "+" in v}
    with pytest.raises(ValueError):
        voices("valid")


def test_espeak_map_targets_our_inventory():
    assert all(p in PHONEMES for arpa in ESPEAK_TO_ARPABET.values() for p in arpa)
    assert map_phone("'aI") == ("AY",) and map_phone("_:") == () and map_phone("A@") == ("AA", "R")


def test_synthesize_returns_aligned_16k_audio():
    utt = synthesize("turn on light 2", voice="en-us+f3", rate=170, pitch=55)
    assert utt.sample_rate == 16000 and utt.audio.dtype == np.float32
    assert 0.6 < utt.duration < 3.0
    assert np.abs(utt.audio).max() > 0.05
    assert utt.words == ["turn", "on", "light", "two"]
    assert utt.phonemes[-1] == ["T", "UW"]
    # word spans are ordered, inside the audio, and each one holds speech energy
    ends = [e for _, e in utt.word_times]
    assert all(s < e for s, e in utt.word_times) and ends == sorted(ends) and ends[-1] <= utt.duration
    for (s, e), phones, ptimes in zip(utt.word_times, utt.phonemes, utt.phone_times, strict=True):
        assert len(ptimes) == len(phones) and ptimes[0][0] == s and ptimes[-1][1] == e
        seg = utt.audio[int(s * 16000):int(e * 16000)]
        assert np.sqrt(np.mean(seg ** 2)) > 0.01
    # before the first word and after the last there is (almost) silence
    assert np.sqrt(np.mean(utt.audio[: int(utt.word_times[0][0] * 16000) - 80] ** 2)) < 0.01


def test_rate_changes_duration_and_voices_differ():
    slow = synthesize("open the door", voice="en-gb-x-rp", rate=120)
    fast = synthesize("open the door", voice="en-gb-x-rp", rate=240)
    assert slow.duration > 1.5 * fast.duration
    other = synthesize("open the door", voice="en-gb-x-rp+m3", rate=240)
    n = min(len(fast.audio), len(other.audio))
    assert not np.allclose(fast.audio[:n], other.audio[:n], atol=1e-3)


def test_random_params_come_from_the_split():
    rng = np.random.default_rng(1)
    dev = set(voices("dev"))
    for _ in range(20):
        p = random_params(rng, "dev")
        assert p["voice"] in dev
        assert synthesize("yes", **p).duration > 0.1


def test_align_labels_handles_missing_and_extra_phones():
    # engine said "L AY T" for labels "L AY T S" + an extra leading "HH"
    timed = [("HH", 0.0, 0.1), ("L", 0.1, 0.2), ("AY", 0.2, 0.4), ("T", 0.4, 0.5)]
    words, phones = align_labels([["L", "AY", "T", "S"]], timed)
    assert phones[0][0] == (0.1, 0.2) and phones[0][2] == (0.4, 0.5)
    assert phones[0][3] == (0.5, 0.5)  # unmatched label phone sits at the end, zero length
    assert words == [(0.1, 0.5)]
