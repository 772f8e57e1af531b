"""The service's side of the Spotter: enrollment checks, keyword limits, and one decode step.

Everything here runs in the node's worker threads (never on the event loop). Enrollment results
are cached per (text, threshold) because automatic thresholds are calibrated against generated
confusable texts, which costs far more than a lookup when many devices enroll the same words.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from wakeline.v1 import edge_pb2

MAX_KEYWORD_CHARS = 100


class KeywordError(ValueError):
    """An enrollment request the spotter cannot honour (maps to INVALID_ARGUMENT)."""


def normalize(text: str) -> str:
    """Keyword identity: lower case, single spaces."""
    return " ".join(text.lower().split())


def _phoneme_strings(phonemes) -> list[str]:
    # The spotter gives one list per word; the proto wants a flat list with "|" between words.
    if phonemes and isinstance(phonemes[0], (list, tuple)):
        out: list[str] = []
        for i, word in enumerate(phonemes):
            if i:
                out.append("|")
            out.extend(str(p) for p in word)
        return out
    return [str(p) for p in phonemes or ()]


class KeywordBook:
    """Wraps a spotter for the service.

    Args:
        spotter: `edge.spotter.Spotter` (create_stream, enroll, is_ready, decode).
        max_keywords: most keywords one stream may hold.
    """

    def __init__(self, spotter, max_keywords: int, cache_size: int = 4096) -> None:
        self.spotter = spotter
        self.max_keywords = max_keywords
        self._cache: OrderedDict[tuple[str, float | None], edge_pb2.EnrolledKeyword] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def enroll(self, text: str, threshold: float | None) -> edge_pb2.EnrolledKeyword:
        """Validate and enroll one keyword; raises KeywordError with a clear message."""
        norm = normalize(text)
        if not norm:
            raise KeywordError("keyword text must not be empty")
        if len(norm) > MAX_KEYWORD_CHARS:
            raise KeywordError(f"keyword {norm[:20]!r}... is longer than {MAX_KEYWORD_CHARS} characters")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise KeywordError(f"threshold {threshold} of keyword {norm!r} is outside [0, 1]")
        key = (norm, None if threshold is None else round(float(threshold), 6))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        try:
            ek = self.spotter.enroll(norm) if threshold is None else self._enroll_fixed(norm, threshold)
        except (ValueError, KeyError) as e:
            raise KeywordError(f"cannot enroll keyword {norm!r}: {e}") from e
        msg = edge_pb2.EnrolledKeyword(
            text=norm, phonemes=_phoneme_strings(ek.phonemes), threshold=float(ek.threshold),
            auto_threshold=threshold is None and bool(getattr(ek, "auto_threshold", True)))
        with self._lock:
            self._cache[key] = msg
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return msg

    def _enroll_fixed(self, norm: str, threshold: float):
        try:
            ek = self.spotter.enroll(norm, threshold=threshold)
        except TypeError:  # a spotter whose enroll() takes no threshold
            ek = self.spotter.enroll(norm)
        ek.threshold = float(threshold)
        return ek

    def create_stream(self, specs: list[tuple[str, float | None]]):
        """Enroll `specs` [(text, threshold|None)] and open a spotter stream with them."""
        if len(specs) > self.max_keywords:
            raise KeywordError(f"{len(specs)} keywords exceed the limit of {self.max_keywords} per stream")
        enrolled: dict[str, edge_pb2.EnrolledKeyword] = {}
        for text, thr in specs:
            ek = self.enroll(text, thr)
            enrolled[ek.text] = ek  # the same keyword twice: the last spec wins
        stream = self.spotter.create_stream([(k.text, k.threshold) for k in enrolled.values()])
        return list(enrolled.values()), stream

    def change(self, stream, current: dict, add: list[tuple[str, float | None]], remove: list[str]):
        """Add and remove keywords on a live stream; returns (added, new keyword dict). All or nothing."""
        removing = {normalize(t) for t in remove}
        new = {t: k for t, k in current.items() if t not in removing}
        added = [self.enroll(text, thr) for text, thr in add]
        for ek in added:
            new[ek.text] = ek
        if len(new) > self.max_keywords:
            raise KeywordError(f"{len(new)} keywords would exceed the limit of {self.max_keywords} per stream")
        replaced = removing | {ek.text for ek in added}
        for text in current:
            if text in replaced:
                stream.remove_keyword(text)
        for ek in added:
            stream.add_keyword(ek.text, threshold=ek.threshold)
        return added, new

    def process(self, stream, sample_rate: int, samples):
        """Feed samples (None = end of input) and decode all that is ready; returns (detections, cpu s)."""
        t0 = time.thread_time()
        if samples is None:
            finish = getattr(stream, "input_finished", None)
            if finish is not None:
                finish()
        else:
            stream.accept_waveform(sample_rate, samples)
        while self.spotter.is_ready(stream):
            self.spotter.decode(stream)
        return list(stream.results()), time.thread_time() - t0
