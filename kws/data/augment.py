"""Augmentation: simulated rooms, real and coloured noise, babble, gain and speed.

Real noise clips come from Debian data packages fetched without installing them
(``apt-get download`` + ``dpkg -x``): ``openarena-data`` (fans, machinery, hum, wind, water,
fire) and ``sound-theme-freedesktop``, plus ``/usr/share/sounds/alsa/Noise.wav``. They are
resampled once into ``noise_bank.npz`` (int16, ~20 MB) in the cache folder; that one file can be
carried to a machine without network (set ``WAKELINE_NOISE_BANK``). Without it, coloured noise
is used and a warning says so.

All transforms keep the utterance's alignments right (``Utterance.shifted``).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from edge.phonemizer import cache_dir
from kws.data.utterance import SAMPLE_RATE, Utterance

log = logging.getLogger(__name__)

_NOISE_PACKAGES = ["openarena-data", "sound-theme-freedesktop"]


def noise_bank_path() -> Path:
    """Where the noise bank lives: ``$WAKELINE_NOISE_BANK`` or ``~/.cache/wakeline/noise_bank.npz``."""
    env = os.environ.get("WAKELINE_NOISE_BANK")
    if env:
        return Path(env)
    return cache_dir() / "noise_bank.npz"


def build_noise_bank(path: Path | None = None) -> Path:
    """Fetch the Debian noise packages (no install) and write the 16 kHz noise bank; return its path."""
    import soundfile as sf

    from kws.data.espeak import resample

    path = Path(path or noise_bank_path())
    clips: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if shutil.which("apt-get") and shutil.which("dpkg"):
            for pkg in _NOISE_PACKAGES:
                r = subprocess.run(["apt-get", "download", pkg], cwd=tmp, capture_output=True, text=True)
                debs = glob.glob(os.path.join(tmp, f"{pkg}_*.deb"))
                if r.returncode != 0 or not debs:
                    log.warning("noise: apt-get download %s failed: %s", pkg, r.stderr.strip()[-200:])
                    continue
                subprocess.run(["dpkg", "-x", debs[0], os.path.join(tmp, "x")], check=True)
        files = []
        for pak in glob.glob(os.path.join(tmp, "x", "usr/share/games/openarena/baseoa/pak0.pk3")):
            with zipfile.ZipFile(pak) as zf:
                for info in zf.infolist():
                    if info.filename.startswith("sound/world/") and info.filename.endswith(".wav"):
                        files.append((info.filename, zf.extract(info, os.path.join(tmp, "oa"))))
        for f in glob.glob(os.path.join(tmp, "x", "usr/share/sounds/freedesktop/stereo/*.oga")):
            files.append((os.path.relpath(f, tmp), f))
        if os.path.exists("/usr/share/sounds/alsa/Noise.wav"):
            files.append(("alsa/Noise.wav", "/usr/share/sounds/alsa/Noise.wav"))
        for name, f in files:
            try:
                x, sr = sf.read(f, dtype="float32", always_2d=True)
            except Exception as e:  # a codec soundfile lacks: skip that clip only
                log.warning("noise: cannot read %s: %s", name, e)
                continue
            x = resample(x.mean(axis=1), sr)
            if len(x) >= SAMPLE_RATE // 4 and np.abs(x).max() > 1e-3:
                clips[name] = np.clip(x / np.abs(x).max() * 32000, -32768, 32767).astype(np.int16)
    if not clips:
        raise RuntimeError("noise: no clips found (no apt-get / dpkg, or no network to the Debian mirror)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".tmp.npz")
    np.savez(tmp_path, **{k.replace("/", "__"): v for k, v in clips.items()})
    os.replace(tmp_path, path)
    return path


def load_noise_bank(path: Path | None = None, fetch: bool = False) -> list[np.ndarray]:
    """The real-noise clips as float32 arrays (empty list if the bank is missing and not fetched)."""
    path = Path(path or noise_bank_path())
    if not path.exists() and fetch:
        try:
            build_noise_bank(path)
        except Exception as e:
            log.warning("noise: could not build the noise bank (%s); coloured noise only", e)
    if not path.exists():
        return []
    with np.load(path) as z:
        return [z[k].astype(np.float32) / 32768.0 for k in sorted(z.files)]


def coloured_noise(rng: np.random.Generator, n: int, exponent: float | None = None) -> np.ndarray:
    """Noise with power ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    if exponent is None:
        exponent = float(rng.uniform(0.0, 2.0))
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spec *= 1.0 / np.maximum(f, 20.0) ** (exponent / 2)
    x = np.fft.irfft(spec, n).astype(np.float32)
    return x / (np.sqrt(np.mean(x**2)) + 1e-9)


def change_speed(x: np.ndarray, factor: float, max_denominator: int | None = None) -> tuple[np.ndarray, float]:
    """``x`` played ``factor`` times faster: tempo, pitch and formants move together (a cheap change
    of speaker). Returns the audio and the factor applied (times in it are the original ones divided
    by that factor).

    max_denominator: apply the nearest fraction with at most this denominator instead, which keeps
    the polyphase filter short (~1 ms instead of ~30 ms for 2 s of audio at an arbitrary factor).
    """
    if max_denominator:
        from fractions import Fraction

        from scipy.signal import resample_poly

        fr = Fraction(factor).limit_denominator(max_denominator)
        return resample_poly(x, fr.denominator, fr.numerator).astype(np.float32), fr.numerator / fr.denominator
    from kws.data.espeak import resample

    return resample(x, int(round(SAMPLE_RATE * factor)), SAMPLE_RATE), factor


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + noise`` with the noise scaled so that speech RMS / noise RMS is ``snr_db``."""
    gain = rms(speech) / (rms(noise) * 10 ** (snr_db / 20))
    return (speech + gain * noise).astype(np.float32)


def random_rir(rng: np.random.Generator) -> np.ndarray:
    """A room impulse response of a random shoebox room (RT60 0.2-0.9 s), direct path at t=0."""
    import pyroomacoustics as pra

    dim = rng.uniform([3.0, 3.0, 2.4], [10.0, 8.0, 4.0])
    rt60 = float(rng.uniform(0.2, 0.9))
    try:
        absorption, max_order = pra.inverse_sabine(rt60, dim)
    except ValueError:  # a room too small for that RT60
        absorption, max_order = pra.inverse_sabine(0.3, dim)
    room = pra.ShoeBox(dim, fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=min(max_order, 12))
    margin = 0.5
    src = rng.uniform(margin, dim - margin)
    mic = rng.uniform(margin, dim - margin)
    room.add_source(src)
    room.add_microphone(mic)
    room.compute_rir()
    h = np.asarray(room.rir[0][0], dtype=np.float32)
    peak = int(np.argmax(np.abs(h)))
    h = h[max(0, peak - 8):][: int(SAMPLE_RATE * 1.0)]
    return h / (np.abs(h).max() + 1e-9)


class Augmenter:
    """Random realistic degradations of utterances and streams.

    Args:
        seed: base seed; each call takes its own ``rng``, so results are reproducible per item.
        noise: real noise clips (``load_noise_bank()``); coloured noise is used when empty.
        n_rirs: rooms simulated up front and reused (each takes a few ms to tens of ms).
        p_reverb, p_noise, p_speed: probabilities of each transform.
    """

    def __init__(self, seed: int = 0, noise: list[np.ndarray] | None = None, n_rirs: int = 24,
                 p_reverb: float = 0.5, p_noise: float = 0.8, p_speed: float = 0.3):
        rng = np.random.default_rng(seed)
        self.noise = noise if noise is not None else load_noise_bank()
        self.rirs = [random_rir(rng) for _ in range(n_rirs)]
        self.p_reverb, self.p_noise, self.p_speed = p_reverb, p_noise, p_speed

    def noise_clip(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` samples of real (looped, random offset) or coloured noise, unit RMS."""
        if self.noise and rng.random() < 0.7:
            clip = self.noise[int(rng.integers(len(self.noise)))]
            reps = n // len(clip) + 2
            start = int(rng.integers(len(clip)))
            x = np.tile(clip, reps)[start:start + n]
            return x / (rms(x) + 1e-9)
        return coloured_noise(rng, n)

    def reverb(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        from scipy.signal import fftconvolve

        h = self.rirs[int(rng.integers(len(self.rirs)))]
        y = fftconvolve(x, h)[: len(x)].astype(np.float32)
        return y * (rms(x) / (rms(y) + 1e-9))

    def __call__(self, utt: Utterance, rng: np.random.Generator, babble: list[np.ndarray] | None = None,
                 pad: tuple[float, float] = (0.2, 0.6)) -> Utterance:
        """Speed, silence padding, room, noise or babble at 0-20 dB SNR, gain; alignments follow.

        Args:
            utt: clean utterance.
            rng: the item's random generator.
            babble: other utterances' audio to sum into babble noise (optional).
            pad: range of seconds of leading and trailing context added around the speech.
        """
        x = utt.audio.astype(np.float32)
        scale = 1.0
        if rng.random() < self.p_speed:
            factor = float(rng.uniform(0.9, 1.1))  # > 1 speeds up
            x, factor = change_speed(x, factor)
            scale = 1.0 / factor
        lead = int(rng.uniform(*pad) * SAMPLE_RATE)
        tail = int(rng.uniform(*pad) * SAMPLE_RATE)
        x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(tail, np.float32)])
        if rng.random() < self.p_reverb:
            x = self.reverb(rng, x)
        if rng.random() < self.p_noise:
            if babble and rng.random() < 0.3:
                noise = make_babble(rng, babble, len(x))
            else:
                noise = self.noise_clip(rng, len(x))
            x = mix_at_snr(x, noise, float(rng.uniform(0.0, 20.0)))
        x = apply_gain(x, float(rng.uniform(-20.0, 3.0)))
        out = utt.shifted(x, lead / SAMPLE_RATE, scale)
        out.params = dict(utt.params, aug={"speed": round(1 / scale, 3), "lead": round(lead / SAMPLE_RATE, 3)})
        return out


def make_babble(rng: np.random.Generator, pool: list[np.ndarray], n: int, talkers: int | None = None) -> np.ndarray:
    """Several talkers from ``pool`` overlapped at random offsets, ``n`` samples, unit RMS."""
    talkers = talkers or int(rng.integers(3, 7))
    out = np.zeros(n, np.float32)
    for _ in range(talkers):
        pos = 0 - int(rng.integers(0, SAMPLE_RATE))
        while pos < n:
            clip = pool[int(rng.integers(len(pool)))]
            clip = clip / (rms(clip) + 1e-9)
            a, b = max(pos, 0), min(pos + len(clip), n)
            if b > a:
                out[a:b] += clip[a - pos:b - pos]
            pos += len(clip) + int(rng.integers(0, SAMPLE_RATE // 4))
    return out / (rms(out) + 1e-9)


def apply_gain(x: np.ndarray, db: float) -> np.ndarray:
    """Scale by ``db`` relative to a -20 dBFS RMS level, then clip to [-1, 1]."""
    target = 10 ** ((-20.0 + db) / 20)
    return np.clip(x * (target / (rms(x) + 1e-9)), -1.0, 1.0).astype(np.float32)
