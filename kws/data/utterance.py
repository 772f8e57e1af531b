"""One synthesized utterance with its labels and time alignments, and the alignment arithmetic.

Every engine returns an ``Utterance``: 16 kHz float32 mono audio, the words and the ARPAbet
phonemes of ``edge.phonemizer`` (the labels the model is trained on), and per-word and per-phoneme
time spans in seconds. Engines that report their own phoneme sequence with times (eSpeak) are
mapped onto our labels by a minimum-edit-distance alignment (``align_labels``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16000


@dataclass
class Utterance:
    """Audio plus labels. Times are seconds from the start of ``audio``."""

    audio: np.ndarray                                  # [T] float32, 16 kHz mono
    text: str
    words: list[str]                                   # normalized words, as spoken
    phonemes: list[list[str]]                          # ARPAbet per word (edge.phonemizer)
    word_times: list[tuple[float, float]]              # per word
    phone_times: list[list[tuple[float, float]]]       # per word, per phoneme
    engine: str = "espeak"
    voice: str = ""
    params: dict = field(default_factory=dict)
    sample_rate: int = SAMPLE_RATE

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    def shifted(self, audio: np.ndarray, offset: float, scale: float = 1.0) -> Utterance:
        """The same labels on new audio whose time t maps to ``offset + scale * t``."""
        def f(span):
            return (round(offset + scale * span[0], 4), round(offset + scale * span[1], 4))

        return Utterance(
            audio=audio, text=self.text, words=self.words, phonemes=self.phonemes,
            word_times=[f(s) for s in self.word_times],
            phone_times=[[f(s) for s in w] for w in self.phone_times],
            engine=self.engine, voice=self.voice, params=dict(self.params), sample_rate=self.sample_rate,
        )

    def crop(self, first_word: int, last_word: int, before: float = 0.0, after: float = 0.0) -> Utterance:
        """Words ``first_word..last_word`` cut out with ``before`` / ``after`` seconds of their
        neighbours (coarticulation, fragments of the next word: what a phrase cut out of continuous
        speech holds), labels shifted to the cut; the neighbours' labels are dropped."""
        t0, t1 = self.span(first_word, last_word)
        a = max(0, int(round((t0 - before) * self.sample_rate)))
        b = min(len(self.audio), int(round((t1 + after) * self.sample_rate)))
        words = slice(first_word, last_word + 1)
        kept = Utterance(
            audio=self.audio, text=" ".join(self.words[words]), words=self.words[words],
            phonemes=self.phonemes[words], word_times=self.word_times[words],
            phone_times=self.phone_times[words], engine=self.engine, voice=self.voice,
            params={**self.params, "crop": [first_word, last_word]}, sample_rate=self.sample_rate,
        )
        return kept.shifted(self.audio[a:b].copy(), -a / self.sample_rate)

    def span(self, first_word: int, last_word: int) -> tuple[float, float]:
        """Start of word ``first_word`` to end of word ``last_word`` (inclusive)."""
        return self.word_times[first_word][0], self.word_times[last_word][1]

    def labels(self) -> dict:
        """JSON-ready labels: text, words, phonemes, alignments (no audio)."""
        return {
            "text": self.text,
            "words": self.words,
            "phonemes": self.phonemes,
            "word_times": [list(s) for s in self.word_times],
            "phone_times": [[list(s) for s in w] for w in self.phone_times],
            "engine": self.engine,
            "voice": self.voice,
            "params": self.params,
            "duration": round(self.duration, 4),
        }


def random_word_span(n_words: int, rng: np.random.Generator, max_words: int = 3) -> tuple[int, int]:
    """First and last index of 1..``max_words`` consecutive words out of ``n_words`` (a uniform
    start; spans that would run past the end are shortened): the phrases training cuts and
    pair-benchmark cuts are made of."""
    first = int(rng.integers(n_words))
    return first, min(n_words - 1, first + int(rng.integers(max_words)))


def _sub_cost(a: str, b: str) -> float:
    if a == b:
        return 0.0
    vowel = set("AEIOU")
    # vowels swap for vowels across accents far more often than for consonants
    return 0.6 if (a[0] in vowel) == (b[0] in vowel) else 1.0


def align_labels(
    labels: list[list[str]], engine_phones: list[tuple[str, float, float]]
) -> tuple[list[tuple[float, float]], list[list[tuple[float, float]]]]:
    """Time our label phonemes from an engine's timed phonemes (already in ARPAbet).

    Args:
        labels: ARPAbet phonemes per word (our labels).
        engine_phones: ``(phoneme, start, end)`` in time order, pauses removed.

    Returns ``(word_times, phone_times)``. A label phoneme matched to engine phonemes takes
    their span; unmatched engine phonemes extend the preceding label phoneme; unmatched label
    phonemes share the gap between their matched neighbours equally.
    """
    flat = [p for w in labels for p in w]
    n, m = len(flat), len(engine_phones)
    if n == 0:
        raise ValueError("align_labels: no label phonemes")
    if m == 0:
        raise ValueError("align_labels: engine produced no phonemes")
    cost = np.zeros((n + 1, m + 1))
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(cost[i - 1, j] + 1, cost[i, j - 1] + 1,
                             cost[i - 1, j - 1] + _sub_cost(flat[i - 1], engine_phones[j - 1][0]))
    # backtrace: owner[j] = label index that engine phone j belongs to (or -1)
    owner = [-1] * m
    matched = [False] * n
    i, j = n, m
    while i > 0 and j > 0:
        if cost[i, j] == cost[i - 1, j - 1] + _sub_cost(flat[i - 1], engine_phones[j - 1][0]):
            owner[j - 1], matched[i - 1] = i - 1, True
            i, j = i - 1, j - 1
        elif cost[i, j] == cost[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    spans: list[list[float] | None] = [None] * n
    last = -1
    for j, (_, s, e) in enumerate(engine_phones):
        k = owner[j] if owner[j] >= 0 else last
        if k < 0:
            continue  # engine phones before the first match: leading junk, ignore
        if spans[k] is None:
            spans[k] = [s, e]
        else:
            spans[k][1] = max(spans[k][1], e)
        last = max(last, k)
    t0, t1 = engine_phones[0][1], engine_phones[-1][2]
    i = 0
    while i < n:
        if spans[i] is not None:
            i += 1
            continue
        k = i
        while k < n and spans[k] is None:
            k += 1
        lo = spans[i - 1][1] if i > 0 else t0
        hi = spans[k][0] if k < n else t1
        if hi < lo:
            hi = lo
        step = (hi - lo) / (k - i)
        for q in range(i, k):
            spans[q] = [lo + step * (q - i), lo + step * (q - i + 1)]
        i = k
    phone_times: list[list[tuple[float, float]]] = []
    word_times: list[tuple[float, float]] = []
    q = 0
    for w in labels:
        ws = [(round(spans[q + r][0], 4), round(spans[q + r][1], 4)) for r in range(len(w))]
        q += len(w)
        phone_times.append(ws)
        word_times.append((ws[0][0], ws[-1][1]))
    return word_times, phone_times
