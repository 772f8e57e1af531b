"""Training-data augmentation and live synthesis: labels stay aligned, features change as intended."""

from __future__ import annotations

import time

import numpy as np
import torch

from kws.corpus import LiveCorpus, random_eq, speed_perturb
from kws.data.synth import synthesize
from kws.train import PAD_FEAT, feature_augment


def _speech_span(x: np.ndarray, sr: int = 16000) -> tuple[float, float]:
    on = np.nonzero(np.abs(x) > 0.05 * np.abs(x).max())[0]
    return on[0] / sr, on[-1] / sr


def test_speed_perturb_keeps_word_times_on_the_speech():
    utt = synthesize("turn the lights on", voice="espeak:en-us", rate=1.0)
    x = np.concatenate([np.zeros(4000, np.float32), utt.audio])
    utt = utt.shifted(x, 0.25)
    s0, e0 = _speech_span(x)
    for factor in (0.85, 1.15):
        y, v = speed_perturb(x, utt, factor)
        assert abs(len(y) / len(x) - 1 / factor) < 0.01
        s, e = _speech_span(y)
        # the labelled speech moves with the audio: starts and ends scale by 1/factor
        assert abs(v.word_times[0][0] - utt.word_times[0][0] / factor) < 0.01
        assert abs(s - s0 / factor) < 0.03 and abs(e - e0 / factor) < 0.06
        assert v.word_times[0][0] <= s + 0.05 and v.word_times[-1][1] >= e - 0.1


def test_crop_keeps_the_words_and_their_alignment():
    utt = synthesize("turn on the kitchen lights", voice="espeak:en-us", rate=1.0)
    (s1, _), (_, e2) = utt.word_times[1], utt.word_times[2]
    c = utt.crop(1, 2, before=0.03, after=0.05)
    assert c.words == utt.words[1:3] and c.phonemes == utt.phonemes[1:3] and c.text == "on the"
    assert abs(c.duration - (e2 - s1 + 0.08)) < 0.002
    assert abs(c.word_times[0][0] - 0.03) < 0.002 and abs(c.word_times[-1][1] - (c.duration - 0.05)) < 0.002
    a = int(round((s1 - 0.03) * 16000))
    np.testing.assert_array_equal(c.audio, utt.audio[a : a + len(c.audio)])  # the same samples
    assert all(0 <= t0 < t1 <= c.duration for w in c.phone_times for t0, t1 in w)


def test_crop_share_cuts_training_sentences(monkeypatch):
    from kws.corpus import CROP_ENV, _worker

    monkeypatch.setenv(CROP_ENV, "1")
    out = _worker((3, 12, "train", 4, 5, False, None, 1e18))
    assert all(1 <= len(e["words"]) <= 3 for e in out)
    assert all(len(e["ids"]) == e["words"][-1][1] + 1 for e in out)  # CTC targets = the cut's phonemes
    monkeypatch.setenv(CROP_ENV, "0")
    assert all(len(e["words"]) >= 4 for e in _worker((3, 12, "train", 4, 5, False, None, 1e18)))


def test_random_eq_changes_the_spectrum_not_the_length():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(16000).astype(np.float32)
    y = random_eq(x, rng)
    assert y.shape == x.shape and y.dtype == np.float32
    fx, fy = np.abs(np.fft.rfft(x)), np.abs(np.fft.rfft(y))
    ratio_db = 20 * np.log10((fy[100:7900] + 1e-9) / (fx[100:7900] + 1e-9))
    assert ratio_db.max() - ratio_db.min() > 3.0  # coloured
    assert np.abs(ratio_db).max() < 8.0 + 12.0 + 1.0  # within the stated +-8 dB (+ 12 dB low cut)


def test_feature_augment_leaves_padding_and_shape_alone():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 60, 40) - 4
    x[1, 45:] = PAD_FEAT
    y = feature_augment(x, g)
    assert y.shape == x.shape
    assert not torch.equal(y[0], x[0])
    # masked bands are set to the utterance's mean over real frames, never to the padding value
    assert float(y[1, :45].min()) > PAD_FEAT + 1.0
    # the tilt is one curve per utterance: the same offset on every frame of a bin
    d = y[2] - x[2]
    same_offset = (d - d[0]).abs().amax(0) < 1e-4
    assert same_offset.sum() >= 40 - 12 and d[0, same_offset].abs().max() > 0.01


def test_feature_warp_moves_formants_and_keeps_padding():
    g = torch.Generator().manual_seed(1)
    x = torch.full((8, 30, 40), -6.0)
    x[:, :, 20] = 2.0  # one "formant" at bin 20
    x[:, 25:] = PAD_FEAT
    y = feature_augment(x, g, max_tilt=0.0, masks=0, max_warp=0.15)
    peaks = y[:, 0].argmax(-1)
    assert len(set(peaks.tolist())) > 1 and (peaks - 20).abs().max() <= 4  # moved, by at most ~15 %
    assert torch.allclose(y[:, 25:], torch.full_like(y[:, 25:], PAD_FEAT))
    # no warp: the identity
    assert torch.equal(feature_augment(x, g, max_tilt=0.0, masks=0), x)


def test_time_masks_blank_short_spans_inside_the_utterance():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 80, 40) - 4
    x[:, 60:] = PAD_FEAT
    y = feature_augment(x, g, max_tilt=0.0, masks=0, time_masks=2, max_time=8)
    changed = (y != x).any(-1)  # [B, T] frames touched
    assert changed.any() and not changed[:, 60:].any()  # inside the utterance only
    assert int(changed.sum(1).max()) <= 16  # two spans of at most 8 frames
    mean = x[:, :60].mean(dim=(1, 2))
    for b in range(16):  # a touched frame holds the utterance's mean in every bin
        if changed[b].any():
            assert torch.allclose(y[b, changed[b]], mean[b].expand_as(y[b, changed[b]]), atol=1e-5)
    # off by default: the same draws as before for the runs without it
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(feature_augment(x, g1), feature_augment(x, g2, time_masks=0))


def test_live_corpus_keeps_adding_examples():
    data: list[dict] = []
    live = LiveCorpus(data, workers=1, job_size=10, seed=5)
    try:
        deadline = time.time() + 60
        while len(data) < 20 and time.time() < deadline:
            time.sleep(0.5)
    finally:
        live.close()
    assert len(data) >= 20 and live.made == len(data)
    e = data[0]
    assert e["feats"].dtype == np.float16 and e["feats"].shape[1] == 40
    assert len(e["frames"]) == len(e["feats"]) // 2 and (e["frames"] >= 0).any()
    assert len({d["text"] for d in data}) > 10


def test_a_broken_engine_stops_the_corpus_instead_of_failing_quietly(monkeypatch):
    import pytest

    import kws.data.synth as synth
    from kws.corpus import _worker

    def broken(*args, **kwargs):  # what a missing dependency on a GPU machine looks like
        raise ModuleNotFoundError("No module named 'soundfile'")

    monkeypatch.setattr(synth, "synth_flite", broken)
    if not synth.flite_available():
        pytest.skip("flite is not installed")
    with pytest.raises(RuntimeError, match="flite keeps failing"):
        _worker((1, 300, "train", 1, 3, False, None, 1e18))
