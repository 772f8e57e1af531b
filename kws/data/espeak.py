"""In-process eSpeak NG synthesis (PyPI ``espeakng-loader`` + ctypes) with exact phoneme timing.

``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, ..., PHONEME_EVENTS)`` makes eSpeak call our
callback with 22,050 Hz PCM and WORD / PHONEME events carrying the output sample at which
each starts. eSpeak's own phonemes are mapped to ARPAbet (``ESPEAK_TO_ARPABET``) and aligned
onto the labels of ``edge.phonemizer`` (the text is fed to eSpeak already normalized, so both
sides speak the same words). eSpeak is a process-global singleton: one engine per process,
guarded by a lock; use worker processes, not threads, for parallel synthesis.

Usage::

    utt = synthesize("turn on the lights", voice="en-us+f3", rate=170, pitch=55)
    utt.audio, utt.word_times, utt.phone_times
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from kws.data.utterance import SAMPLE_RATE, Utterance, align_labels

ESPEAK_RATE = 22050

# eSpeak NG English phoneme mnemonics (stress marks stripped) -> ARPAbet
ESPEAK_TO_ARPABET: dict[str, tuple[str, ...]] = {
    "p": ("P",), "b": ("B",), "t": ("T",), "d": ("D",), "k": ("K",), "g": ("G",), "f": ("F",),
    "v": ("V",), "T": ("TH",), "D": ("DH",), "s": ("S",), "z": ("Z",), "S": ("SH",), "Z": ("ZH",),
    "h": ("HH",), "tS": ("CH",), "dZ": ("JH",), "m": ("M",), "n": ("N",), "N": ("NG",), "l": ("L",),
    "r": ("R",), "w": ("W",), "j": ("Y",), "x": ("K",), "?": ("T",), "hw": ("W",),
    "t#": ("T",), "t[": ("T",), "t2": ("T",), "d#": ("D",), "z#": ("Z",), "r-": ("R",), "n-": ("N",),
    "m-": ("M",), "l-": ("L",), "w#": ("W",), "@L": ("AH", "L"),
    "a": ("AE",), "aa": ("AE",), "a#": ("AH",), "A:": ("AA",), "A": ("AA",), "0": ("AA",), "02": ("AA",),
    "A@": ("AA", "R"), "aI": ("AY",), "aI2": ("AY",), "aI3": ("AY",), "aI@": ("AY", "ER"),
    "aU": ("AW",), "aU@": ("AW", "ER"), "e": ("EH",), "E": ("EH",), "e@": ("EH", "R"), "eI": ("EY",),
    "@": ("AH",), "@-": ("AH",), "@2": ("AH",), "@5": ("AH",), "V": ("AH",), "VR": ("AH", "R"),
    "3": ("ER",), "3:": ("ER",), "i": ("IY",), "i:": ("IY",), "I": ("IH",), "I2": ("IH",), "I#": ("IH",),
    "i@": ("IH", "R"), "i@3": ("IH", "R"), "IR": ("IH", "R"), "O:": ("AO",), "O": ("AO",), "O2": ("AO",),
    "O@": ("AO", "R"), "o@": ("AO", "R"), "OI": ("OY",), "oU": ("OW",), "o:": ("OW",), "u:": ("UW",),
    "u": ("UW",), "U": ("UH",), "U@": ("UH", "R"),
}
_PAUSES = {"_", "_:", "_!", "_|", "||", "|", ";"}

ACCENTS = ["en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-029", "en-us-nyc",
           "en-gb-x-gbcwmd"]
# variants in espeak-ng-data/voices/!v that still sound like speech (robots, whispers, etc. left out)
VARIANTS = [
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo",
    "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Reed", "RicishayMax", "Storm",
    "Tweaky", "adam", "anika", "antonio", "aunty", "belinda", "benjamin", "boris", "caleb", "david",
    "ed", "edward", "edward2", "gustave", "ian", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta",
    "linda", "marcelo", "max", "michel", "miguel", "mike2", "norbert", "pablo", "paul", "pedro",
    "quincy", "rob", "robert", "sandro", "shelby", "steph", "steph2", "steph3", "travis", "victor", "zac",
]
# voice-disjoint splits: dev/test variants never appear in training; two accents are held out too
HELD_OUT_ACCENTS = {"dev": ["en-us-nyc"], "test": ["en-gb-x-gbcwmd"]}
HELD_OUT_VARIANTS = {
    "dev": ["m3", "f2", "klatt4", "Annie", "Gene", "Michael", "aunty", "david", "iven2", "linda", "paul",
            "steph2", "zac"],
    "test": ["m6", "f4", "klatt6", "Alicia", "Hugo", "Reed", "benjamin", "edward2", "iven4", "max",
             "quincy", "shelby", "travis"],
}


def voices(split: str) -> list[str]:
    """eSpeak voice names ("accent+variant") of a split: ``train``, ``dev`` or ``test``.

    Dev and test variants are disjoint from training ones; dev and test also get one accent
    each that training never hears, mixed with the training accents.
    """
    held = {v for vs in HELD_OUT_VARIANTS.values() for v in vs}
    held_acc = {a for accs in HELD_OUT_ACCENTS.values() for a in accs}
    if split == "train":
        accents = [a for a in ACCENTS if a not in held_acc]
        variants = [v for v in VARIANTS if v not in held]
    elif split in HELD_OUT_VARIANTS:
        accents = [a for a in ACCENTS if a not in held_acc] + HELD_OUT_ACCENTS[split]
        variants = HELD_OUT_VARIANTS[split]
    else:
        raise ValueError(f"voices: unknown split {split!r} (train, dev, test)")
    return [a + (f"+{v}" if v else "") for a in accents for v in variants]


def map_phone(name: str) -> tuple[str, ...]:
    """One eSpeak phoneme mnemonic -> ARPAbet symbols (empty for pauses and unknown symbols)."""
    name = name.lstrip("',%=")
    if name in _PAUSES or not name or name.startswith("_"):
        return ()
    if name in ESPEAK_TO_ARPABET:
        return ESPEAK_TO_ARPABET[name]
    base = name.rstrip("#-[0123456789;/")
    return ESPEAK_TO_ARPABET.get(base, ())


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
_EV_PHONEME, _EV_END, _EV_TERMINATED = 7, 5, 0
_P_RATE, _P_VOLUME, _P_PITCH, _P_RANGE, _P_WORDGAP = 1, 2, 3, 4, 7


class ESpeak:
    """The process-wide eSpeak NG engine. Use ``ESpeak.get()``; calls are serialized by a lock."""

    _instance: ESpeak | None = None
    _init_lock = threading.Lock()

    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        # 2 = AUDIO_OUTPUT_SYNCHRONOUS; 0x1 phoneme events, 0x8000 don't exit() on errors
        rate = self.lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0x0001 | 0x8000)
        if rate != ESPEAK_RATE:
            raise RuntimeError(f"espeak_Initialize failed or changed rate (returned {rate})")
        self._pcm: list[np.ndarray] = []
        self._phones: list[tuple[str, int]] = []
        self._end = 0
        self._written = 0
        self._cb = _CALLBACK(self._on_audio)  # keep a reference: ctypes would free it
        self.lib.espeak_SetSynthCallback(self._cb)
        self._voice = None
        self.lock = threading.Lock()

    def seed(self, seed: int) -> None:
        """Seed eSpeak's noise generators (its own and libc's ``rand``).

        eSpeak's waveform generator also keeps phase state across calls, so audio is
        bit-identical only for the same sequence of calls since the process started: the
        dataset build runs every shard in a fresh process for that reason.
        """
        self.lib.espeak_ng_SetRandSeed(int(seed))
        ctypes.CDLL(None).srand(int(seed) & 0xFFFFFFFF)

    @classmethod
    def get(cls) -> ESpeak:
        """The engine of this process (initialized on first use, ~20 ms)."""
        with cls._init_lock:
            if cls._instance is None:
                cls._instance = ESpeak()
            return cls._instance

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._pcm.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            self._written += n
        i = 0
        while events[i].type != _EV_TERMINATED:
            ev = events[i]
            if ev.type == _EV_PHONEME:
                self._phones.append((bytes(ev.id).split(b"\0")[0].decode("utf-8", "replace"), ev.sample))
            elif ev.type == _EV_END:
                self._end = ev.sample
            i += 1
        return 0

    def synth_raw(self, text: str, voice: str, rate: int = 175, pitch: int = 50, pitch_range: int = 50,
                  word_gap: int = 0) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
        """Synthesize; return (int16 PCM at 22,050 Hz, [(espeak phoneme, start, end) samples])."""
        with self.lock:
            if voice != self._voice:
                if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise ValueError(f"eSpeak has no voice {voice!r}")
                self._voice = voice
            for param, value in ((_P_RATE, rate), (_P_PITCH, pitch), (_P_RANGE, pitch_range),
                                 (_P_WORDGAP, word_gap), (_P_VOLUME, 100)):
                self.lib.espeak_SetParameter(param, int(value), 0)
            self._pcm, self._phones, self._end, self._written = [], [], 0, 0
            data = text.encode("utf-8")
            # position type 1 = POS_CHARACTER; flags 1 = espeakCHARS_UTF8
            err = self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None)
            self.lib.espeak_Synchronize()
            if err != 0:
                raise RuntimeError(f"espeak_Synth failed ({err}) for {text!r}")
            pcm = np.concatenate(self._pcm) if self._pcm else np.zeros(0, np.int16)
            marks = self._phones + [("_", self._end or self._written)]
        spans = [(name, s, max(s, marks[i + 1][1])) for i, (name, s) in enumerate(marks[:-1])]
        return pcm, spans


def resample(x: np.ndarray, src: int, dst: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling to ``dst`` Hz (float32)."""
    from math import gcd

    from scipy.signal import resample_poly

    x = np.asarray(x, dtype=np.float32)
    if src == dst:
        return x
    g = gcd(src, dst)
    return resample_poly(x, dst // g, src // g).astype(np.float32)


_PHONEMIZER = None


def default_phonemizer():
    """A process-wide ``edge.phonemizer.Phonemizer`` (built on first use)."""
    global _PHONEMIZER
    if _PHONEMIZER is None:
        from edge.phonemizer import Phonemizer

        _PHONEMIZER = Phonemizer()
    return _PHONEMIZER


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, pitch_range: int = 50,
               word_gap: int = 0, phonemizer=None) -> Utterance:
    """Speak ``text`` with eSpeak NG; 16 kHz float32 audio with word and phoneme alignments.

    Args:
        text: English text (numbers are spelled out by the phonemizer first).
        voice: eSpeak voice, ``accent[+variant]`` (see ``voices()``).
        rate: words per minute (80-450; 175 is eSpeak's default).
        pitch, pitch_range: 0-100 (50 default).
        word_gap: extra pause between words in units of 10 ms.
        phonemizer: an ``edge.phonemizer.Phonemizer`` (default: one per process).
    """
    ph = phonemizer or default_phonemizer()
    words = ph.normalize(text)
    labels = [ph.word(w) for w in words]
    pcm, spans = ESpeak.get().synth_raw(" ".join(words), voice, rate, pitch, pitch_range, word_gap)
    timed = []
    for name, s, e in spans:
        arpa = map_phone(name)
        for k, p in enumerate(arpa):  # a diphthong + R splits its span evenly
            a = s + (e - s) * k / len(arpa)
            b = s + (e - s) * (k + 1) / len(arpa)
            timed.append((p, a / ESPEAK_RATE, b / ESPEAK_RATE))
    word_times, phone_times = align_labels(labels, timed)
    audio = resample(pcm.astype(np.float32) / 32768.0, ESPEAK_RATE)
    params = {"rate": rate, "pitch": pitch, "range": pitch_range, "word_gap": word_gap}
    return Utterance(audio=audio, text=text, words=words, phonemes=labels, word_times=word_times,
                     phone_times=phone_times, engine="espeak", voice=voice, params=params)


def random_params(rng: np.random.Generator, split: str = "train") -> dict:
    """Random voice, rate, pitch, range and word gap for ``synthesize(**params)`` from a split's voices."""
    vs = voices(split)
    return {
        "voice": vs[int(rng.integers(len(vs)))],
        "rate": int(rng.integers(120, 250)),
        "pitch": int(rng.integers(25, 80)),
        "pitch_range": int(rng.integers(20, 90)),
        "word_gap": int(rng.choice([0, 0, 0, 1, 2])),
    }
