"""The service's side of the Spotter: enrollment checks, keyword limits, and one decode step.

Everything here runs in the node's worker threads (never on the event loop): enrollment with an
automatic threshold scores generated confusable texts, which is real work the first time a text
is seen (the spotter caches it per text).
"""

from __future__ import annotations

import time

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

    def __init__(self, spotter, max_keywords: int) -> None:
        self.spotter = spotter
        self.max_keywords = max_keywords

    def enroll(self, text: str, threshold: float | None) -> edge_pb2.EnrolledKeyword:
        """Validate and enroll one keyword (the spotter caches per text); raises KeywordError."""
        norm = normalize(text)
        if not norm:
            raise KeywordError("keyword text must not be empty")
        if len(norm) > MAX_KEYWORD_CHARS:
            raise KeywordError(f"keyword {norm[:20]!r}... is longer than {MAX_KEYWORD_CHARS} characters")
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise KeywordError(f"threshold {threshold} of keyword {norm!r} is outside (0, 1)")
        try:
            ek = self.spotter.enroll(norm)
        except (ValueError, KeyError) as e:
            raise KeywordError(f"cannot enroll keyword {norm!r}: {e}") from e
        auto = getattr(ek, "auto_threshold", None)
        is_auto = threshold is None and auto is not None and abs(float(auto) - float(ek.threshold)) < 1e-9
        return edge_pb2.EnrolledKeyword(
            text=norm, phonemes=_phoneme_strings(ek.phonemes),
            threshold=float(ek.threshold if threshold is None else threshold), auto_threshold=is_auto)

    def create_stream(self, specs: list[tuple[str, float | None]]):
        """Enroll `specs` [(text, threshold|None)] and open a spotter stream with them."""
        if len(specs) > self.max_keywords:
            raise KeywordError(f"{len(specs)} keywords exceed the limit of {self.max_keywords} per stream")
        enrolled: dict[str, edge_pb2.EnrolledKeyword] = {}
        for text, thr in specs:
            ek = self.enroll(text, thr)
            enrolled[ek.text] = ek  # the same keyword twice: the last spec wins
        stream = self.spotter.create_stream([(k.text, None if k.auto_threshold else k.threshold)
                                             for k in enrolled.values()])
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
            stream.add_keyword(ek.text, threshold=None if ek.auto_threshold else ek.threshold)
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
