"""The log-mel front end: streaming equals batch, matches a reference mel, resamples 8-48 kHz."""

from __future__ import annotations

import numpy as np
import pytest

from edge.features import (
    FeatureConfig,
    LogMel,
    StreamingLogMel,
    StreamResampler,
    check_rate,
    resample,
    to_mono_float,
)


def test_streaming_equals_batch_for_random_chunking():
    rng = np.random.default_rng()
    x = rng.standard_normal(16000 * 2 + 123).astype(np.float32) * 0.1
    full = LogMel()(x)
    st = StreamingLogMel()
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 2500))
        parts.append(st.accept(x[i : i + n]))
        i += n
    got = np.concatenate(parts)
    assert got.shape == full.shape == (1 + (len(x) - 400) // 160, 40)
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-4)


def test_matches_librosa_htk_mel():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng()
    x = rng.standard_normal(8000).astype(np.float32)
    cfg = FeatureConfig()
    ours = LogMel(cfg)(x)
    # librosa frames n_fft samples with the window centred in them: shift so the windows coincide
    off = (cfg.n_fft - cfg.win) // 2
    y = np.concatenate([np.zeros(off, np.float32), x, np.zeros(off, np.float32)])
    ref = librosa.feature.melspectrogram(
        y=y, sr=16000, n_fft=cfg.n_fft, win_length=cfg.win, hop_length=cfg.hop, center=False, power=2.0,
        n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax, htk=True, norm=None, window="hann",
    ).T
    assert len(ref) == len(ours)
    np.testing.assert_allclose(ours, np.log(ref + cfg.log_floor), rtol=1e-3, atol=2e-3)


def test_training_uses_the_same_front_end():
    from kws import corpus

    assert corpus.LogMel is LogMel


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resample_lengths_and_stream_agrees(rate):
    t = np.arange(rate) / rate
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = resample(x, rate)
    assert abs(len(y) - 16000) <= 2
    rs = StreamResampler(rate)
    ys = np.concatenate([rs(x[i : i + 1000]) for i in range(0, len(x), 1000)] + [rs(np.zeros(0), last=True)])
    assert abs(len(ys) - 16000) <= 2
    # the tone survives at its frequency
    spec = np.abs(np.fft.rfft(ys[2000:14000]))
    assert abs(np.argmax(spec) * 16000 / 12000 - 440) < 3


def test_rate_limits_and_mono():
    for bad in (7999, 48001, 0, 16000.5):
        with pytest.raises(ValueError):
            check_rate(bad)
    st = np.stack([np.full(10, 16384, np.int16), np.zeros(10, np.int16)], axis=1)
    np.testing.assert_allclose(to_mono_float(st), np.full(10, 0.25, np.float32))
