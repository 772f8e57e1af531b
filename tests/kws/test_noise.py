"""The bank of real noises: what it takes from the packages, and how training draws from it."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import soundfile as sf

from kws.data.noise import NoiseBank, build


def _wav(x: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV")
    return buf.getvalue()


def _tree(tmp_path):
    """A package tree: a 22 kHz hum file, a pk3 with one world sound and one skipped member."""
    t = np.arange(22050 * 8) / 22050
    hum = (0.3 * np.sin(2 * np.pi * 120 * t)).astype(np.float32)
    root = tmp_path / "tree"
    (root / "usr/share/sounds").mkdir(parents=True)
    (root / "usr/share/sounds/hum.wav").write_bytes(_wav(hum, 22050))
    rng = np.random.default_rng(0)
    fan = (0.2 * rng.standard_normal(16000)).astype(np.float32)
    with zipfile.ZipFile(root / "pak0.pk3", "w") as z:
        z.writestr("sound/world/fan.wav", _wav(fan, 16000))
        z.writestr("sound/weapons/rocket.wav", _wav(fan, 16000))  # not a noise we want
        z.writestr("sound/world/readme.txt", "not audio")
    return root


def test_build_cuts_clips_and_skips_what_is_not_noise(tmp_path):
    n = build(tmp_path / "bank", tree=_tree(tmp_path))
    bank = NoiseBank(tmp_path / "bank")
    assert n == len(bank) == 3  # hum: 8 s -> 6 s + 2 s; fan: 1 s; the rocket and the text skipped
    assert sorted(bank.names) == ["pak0.pk3:sound/world/fan.wav@0s", "usr/share/sounds/hum.wav@0s",
                                  "usr/share/sounds/hum.wav@6s"]
    lengths = sorted(len(c) for c in bank.clips)
    assert abs(lengths[0] - 16000) < 400 and abs(lengths[-1] - 96000) < 400


def test_samples_are_unit_variance_loops_of_one_clip(tmp_path):
    build(tmp_path / "bank", tree=_tree(tmp_path))
    bank = NoiseBank(tmp_path / "bank")
    rng = np.random.default_rng(1)
    for _ in range(10):
        y = bank.sample(rng, 40000)  # longer than the 1 s clip: looped
        assert y.shape == (40000,) and y.dtype == np.float32
        assert abs(float(np.mean(y ** 2)) - 1.0) < 1e-3


def test_augment_mixes_in_the_bank(tmp_path, monkeypatch):
    import kws.corpus as corpus

    build(tmp_path / "bank", tree=_tree(tmp_path))
    monkeypatch.setenv(corpus.NOISE_ENV, str(tmp_path / "bank"))
    monkeypatch.setattr(corpus, "_NOISE", [])
    x = np.zeros(32000, np.float32)
    x[8000:24000] = 0.1 * np.sin(2 * np.pi * 700 * np.arange(16000) / 16000)
    def hums() -> int:
        """Draws whose noise (the silent lead) has a 120 Hz tone standing out of its neighbourhood."""
        n = 0
        for seed in range(40):
            y = corpus.augment(x, np.random.default_rng(seed))
            spec = np.abs(np.fft.rfft(y[:8000] * np.hanning(8000)))
            f = np.arange(len(spec)) * 2
            side = np.median(spec[((f >= 80) & (f < 110)) | ((f > 130) & (f <= 160))])
            n += spec[(f >= 116) & (f <= 124)].max() > 10 * side
        return n

    assert hums() >= 5  # the bank's hum: about a third of draws
    monkeypatch.delenv(corpus.NOISE_ENV)
    monkeypatch.setattr(corpus, "_NOISE", [])
    assert hums() == 0  # coloured noise and babble have no tones
