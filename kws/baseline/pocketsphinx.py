"""PocketSphinx (PyPI ``pocketsphinx`` 5.x, bundled en-us model) as a text-enrolled KWS baseline.

Pair score: forced alignment of the text against the clip (``set_align_text``), minus the
score of a free phone loop (``allphone``) on the same clip: a likelihood-ratio verification
score, higher when the clip says the text; -1 when the aligner finds no path. The phone-loop
score is cached per clip.

Streaming detection: the keyword-spotting search (``kws``) fed 16 kHz int16 audio in chunks of
at most 100 ms after 0.5 s of silence. Each keyword is enrolled at eleven thresholds at once
(1e-1 .. 1e-50, as dictionary aliases), so one pass gives every operating point: a detection's
score is log10 of the strictest threshold at which it fired (-1 .. -50), which is what
``kws eval`` sweeps. The search is not re-armed after a hit (that would reset the stricter
aliases); overlapping firings of one keyword are merged into one detection.

Words outside PocketSphinx's dictionary are added with ``edge.phonemizer`` pronunciations.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

SAMPLE_RATE = 16000
CHUNK = 1600  # 100 ms
# kws thresholds swept in one pass; 3-4 word phrases need the low end (PocketSphinx's advice: up to 1e-50)
LEVELS = [1e-1, 1e-3, 1e-5, 1e-8, 1e-12, 1e-16, 1e-20, 1e-25, 1e-30, 1e-40, 1e-50]


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)


def _merge_firings(firings: list[tuple]) -> list[dict]:
    """One detection per group of overlapping firings of a keyword: the strictest one's time and score."""
    out = []
    by_kw: dict[str, list[tuple]] = {}
    for f in firings:
        by_kw.setdefault(f[0], []).append(f)
    for kw, fs in by_kw.items():
        fs.sort(key=lambda f: f[2])
        group: list[tuple] = []
        for f in fs + [None]:
            if f is not None and group and f[2] < max(g[3] for g in group):
                group.append(f)
                continue
            if group:
                best = min(group, key=lambda g: (g[1], g[4]))  # strictest level, then earliest
                out.append({"keyword": kw, "time": round(best[4], 3),
                            "score": round(float(np.log10(LEVELS[best[1]])), 3)})
            group = [f] if f is not None else []
    return sorted(out, key=lambda d: d["time"])


class PocketSphinxBackend:
    """Scorer and detector behind the same interface as the Spotter backend (see ``kws.eval.backends``)."""

    name = "pocketsphinx"

    def __init__(self):
        from pocketsphinx import Decoder, get_model_path

        from edge.phonemizer import Phonemizer

        self._Decoder = Decoder
        self._model = get_model_path()
        self.ph = Phonemizer()
        self.align = Decoder(lm=None, loglevel="FATAL")
        self.loop = Decoder(allphone=os.path.join(self._model, "en-us-phone.lm.bin"), lm=None, loglevel="FATAL")
        self._loop_cache: dict[int, float] = {}

    def _words(self, decoder, text: str) -> str:
        """Normalized text, adding unknown words to ``decoder``'s dictionary."""
        words = self.ph.normalize(text)
        for w in words:
            if decoder.lookup_word(w) is None:
                decoder.add_word(w, " ".join(self.ph.word(w)), True)
        return " ".join(words)

    def _loop_score(self, pcm: np.ndarray) -> float:
        key = hash(pcm.tobytes())
        if key not in self._loop_cache:
            self.loop.start_utt()
            self.loop.process_raw(pcm.tobytes(), False, True)
            self.loop.end_utt()
            hyp = self.loop.hyp()
            self._loop_cache[key] = hyp.score if hyp else 0.0
            if len(self._loop_cache) > 4096:
                self._loop_cache.clear()
        return self._loop_cache[key]

    def score_pair(self, samples: np.ndarray, sample_rate: int, text: str) -> float:
        """Alignment score of ``text`` minus the phone-loop score (higher: more likely the text)."""
        pcm = self._pcm(samples, sample_rate)
        self.align.set_align_text(self._words(self.align, text))
        self.align.start_utt()
        self.align.process_raw(pcm.tobytes(), False, True)
        self.align.end_utt()
        hyp = self.align.hyp()
        if hyp is None:
            # no path within the default beams; retrying with very wide beams (tried) put easy
            # negatives above positives (AUC vs easy 0.80 -> 0.74 on the dev set), so: a floor
            return -1.0
        return float(hyp.score - self._loop_score(pcm))

    def _pcm(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        if sample_rate != SAMPLE_RATE:
            from kws.data.espeak import resample

            samples = resample(samples, sample_rate)
        pad = np.zeros(SAMPLE_RATE // 4, np.int16)
        return np.concatenate([pad, _to_int16(samples), pad])

    def detect(self, samples: np.ndarray, sample_rate: int, keywords: list[str],
               threshold: float | None = None, chunk_seconds: float = 0.1,
               timings: list[float] | None = None) -> list[dict]:
        """Stream ``samples`` in chunks; return ``[{"keyword", "time", "score"}]`` (time = fired at).

        Every keyword is enrolled once per threshold of ``LEVELS`` (as dictionary aliases
        ``word_k``), so one pass yields the detections of all operating points. Firings of one
        keyword whose segments overlap are one detection, scored ``log10`` of the strictest
        threshold that fired (higher = more confident). ``threshold`` drops detections scoring
        below it. ``timings``, if given, receives the wall time spent on each chunk (for ``bench``).
        """
        import time

        if sample_rate != SAMPLE_RATE:
            from kws.data.espeak import resample

            samples = resample(samples, sample_rate)
        pcm = _to_int16(samples)
        dec = self._Decoder(lm=None, loglevel="FATAL")
        lines, names = [], {}
        for kw in keywords:
            words = self.ph.normalize(kw)
            if " ".join(words) in {" ".join(n.split("_")[0] for n in a.split()) for a in names}:
                continue  # two spellings of one phrase ("channel 5", "channel five"): enrolled once
            for w in words:
                if dec.lookup_word(w) is None:
                    dec.add_word(w, " ".join(self.ph.word(w)), True)
            for k, level in enumerate(LEVELS):
                alias = []
                for w in words:
                    if dec.lookup_word(f"{w}_{k}") is None:  # words shared by keywords: add once
                        dec.add_word(f"{w}_{k}", dec.lookup_word(w), True)
                    alias.append(f"{w}_{k}")
                names[" ".join(alias)] = (kw, k)
                lines.append(f"{' '.join(alias)} /{level:g}/")
        with tempfile.NamedTemporaryFile("w", suffix=".kws", delete=False) as f:
            f.write("\n".join(lines) + "\n")
            path = f.name
        try:
            dec.add_kws("kws", path)
            dec.activate_search("kws")
        finally:
            os.unlink(path)
        firings = []  # (keyword, level index, start s, end s, fired s)
        chunk = max(1, min(CHUNK, int(round(chunk_seconds * SAMPLE_RATE))))
        lead = SAMPLE_RATE // 2
        dec.start_utt()
        dec.process_raw(np.zeros(lead, np.int16).tobytes(), False, False)
        seen = 0
        for i in range(0, len(pcm), chunk):
            t0 = time.perf_counter()
            dec.process_raw(pcm[i:i + chunk].tobytes(), False, False)
            segs = list(dec.seg() or [])
            if timings is not None:
                timings.append(time.perf_counter() - t0)
            fired = min(i + chunk, len(pcm)) / SAMPLE_RATE
            for sg in segs[seen:]:
                kw, k = names.get(sg.word.strip(), (None, None))
                if kw is not None:
                    firings.append((kw, k, sg.start_frame / 100 - lead / SAMPLE_RATE,
                                    sg.end_frame / 100 - lead / SAMPLE_RATE, fired))
            seen = len(segs)
        dec.end_utt()
        return [d for d in _merge_firings(firings) if threshold is None or d["score"] >= threshold]

    def enroll_seconds(self, text: str) -> float:
        """Time to prepare a keyword (dictionary lookup + kws search build), for ``bench``."""
        import time

        t0 = time.perf_counter()
        self.detect(np.zeros(SAMPLE_RATE // 10, np.float32), SAMPLE_RATE, [text])
        return time.perf_counter() - t0

    def info(self) -> dict:
        """Model size on disk (bytes) and parameter count (unknown for PocketSphinx: None)."""
        size = 0
        for root, _, files in os.walk(self._model):
            size += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        return {"name": self.name, "model_bytes": size, "parameters": None}
