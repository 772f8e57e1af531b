"""Per-source state of the keyword spotter (see `edge.spotter.Spotter.create_stream`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from edge.features import check_rate, to_mono_float
from edge.scoring import DSPState, frame_inputs, keyword_rows, keyword_score

if TYPE_CHECKING:
    from edge.spotter import Detection, EnrolledKeyword, Spotter


class Stream:
    """Audio in, detections out. Not thread-safe: one stream belongs to one audio source."""

    def __init__(self, spotter: Spotter):
        self._sp = spotter
        self._rate: int | None = None
        self._resampler = None
        self._feat = spotter.new_featurizer()
        self._frames = np.zeros((0, spotter.feature_cfg.n_mels), np.float32)
        self._finished = False
        self.cache = np.zeros((1, spotter.cache_len, spotter.dim), np.float32)
        self.steps = 0  # encoder frames consumed
        self.samples_in = 0  # 16 kHz samples accepted
        self._kw: list[EnrolledKeyword] = []
        self._thr: list[float] = []
        self._last_fire: list[float] = []
        self._peak: list[tuple | None] = []  # pending (score, end, start, frames held) while rising
        self._rows = None
        self._spans: list[tuple[int, int]] = []  # rows [a, b) of each keyword: one per pronunciation
        self._dsp: DSPState | None = None
        self._results: list[Detection] = []

    # -- keywords ---------------------------------------------------------------------------
    @property
    def keywords(self) -> list[str]:
        """Enrolled keyword texts."""
        return [k.text for k in self._kw]

    def add_keyword(self, text: str, threshold: float | None = None) -> EnrolledKeyword:
        """Enroll `text` on this live stream; `threshold` None means the spotter's choice."""
        if threshold is not None and not (isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0):
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        kw = self._sp.enroll(text)
        if kw.text in self.keywords:
            i = self.keywords.index(kw.text)
            self._thr[i] = kw.threshold if threshold is None else float(threshold)
            return kw
        old = self._dsp
        self._kw.append(kw)
        self._thr.append(kw.threshold if threshold is None else float(threshold))
        self._last_fire.append(-math.inf)
        self._peak.append(None)
        self._rebuild(old, list(range(len(self._kw) - 1)))
        return kw

    def remove_keyword(self, text: str) -> bool:
        """Stop spotting `text`; returns False when it was not enrolled."""
        key = " ".join(text.lower().split())
        if key not in self.keywords:
            return False
        i = self.keywords.index(key)
        old = self._dsp
        keep = [j for j in range(len(self._kw)) if j != i]
        for lst in (self._kw, self._thr, self._last_fire, self._peak):
            del lst[i]
        self._rebuild(old, keep)
        return True

    def _rebuild(self, old: DSPState | None, keep: list[int]) -> None:
        # surviving keywords keep their partial-match state across the change; `keep` are the old
        # indices of the keywords that come first now, in order
        old_spans, self._spans, rows = self._spans, [], []
        for k in self._kw:
            self._spans.append((len(rows), len(rows) + len(k.pronunciations)))
            rows.extend(list(v) for v in k.pronunciations)
        if not self._kw:
            self._rows, self._dsp = None, None
            return
        self._rows = keyword_rows(self._sp.table_emb, rows)
        new = DSPState(self._rows[3], self._sp.matcher.w_sim, self._sp.matcher.w_ctc, width=self._rows[0].shape[1])
        keep = [r for i in keep for r in range(*old_spans[i])]  # keywords -> their rows
        if old is not None and keep:
            # a row's state beyond its own length is never read, so the width may grow or shrink
            new.frames, new.pos = old.frames, old.pos
            w, k = min(old.width, new.width), len(keep)
            new.s_ring[:k, :w] = old.s_ring[keep, :w]
            new.c_ring[:k, :w] = old.c_ring[keep, :w]
            new.d_ring[:k, :w] = old.d_ring[keep, :w]
            new.p_ring[:k, :w, :, :w] = old.p_ring[keep, :w, :, :w]
        self._dsp = new

    # -- audio ------------------------------------------------------------------------------
    def accept_waveform(self, sample_rate: int, samples) -> None:
        """Append float32 mono samples in [-1, 1] at any rate in 8-48 kHz."""
        check_rate(sample_rate)
        if self._finished:
            raise ValueError("stream input already finished")
        x = to_mono_float(samples)
        if not np.all(np.isfinite(x)):
            raise ValueError("samples contain NaN or infinity")
        if self._rate != sample_rate:
            if self._resampler is not None:
                self._push(self._resampler(np.zeros(0, np.float32), last=True))
            self._rate = int(sample_rate)
            self._resampler = self._sp.new_resampler(self._rate)
        self._push(self._resampler(x))

    def input_finished(self) -> None:
        """No more audio: flush the resampler; a final partial chunk becomes decodable."""
        if self._resampler is not None and not self._finished:
            self._push(self._resampler(np.zeros(0, np.float32), last=True))
        self._finished = True

    def _push(self, x16: np.ndarray) -> None:
        if len(x16):
            self.samples_in += len(x16)
            f = self._feat.accept(x16)
            if len(f):
                self._frames = np.concatenate([self._frames, f]) if len(self._frames) else f

    def ready_frames(self) -> int:
        """Feature frames the next decode step will take (0: not ready)."""
        from edge.spotter import CHUNK_FRAMES

        have = len(self._frames)
        if have >= CHUNK_FRAMES:
            return CHUNK_FRAMES
        if self._finished:
            return have - have % self._sp.stack
        return 0

    def take_frames(self, n: int) -> np.ndarray:
        f, self._frames = self._frames[:n], self._frames[n:]
        return f

    # -- decisions --------------------------------------------------------------------------
    def _frame_end_time(self, step: int) -> float:
        c = self._sp.feature_cfg
        last_feat = step * self._sp.stack + self._sp.stack - 1
        return (last_feat * c.hop + c.win) / c.sample_rate

    def consume(self, emb: np.ndarray, logp: np.ndarray) -> None:
        """Feed encoder output frames [n, E], [n, V] to the keyword scorers."""
        from edge.spotter import PEAK_HOLD, REFRACTORY_S, Detection

        for t in range(len(emb)):
            step = self.steps
            self.steps += 1
            if self._dsp is None:
                continue
            q, ids, mask, n = self._rows
            s_t, c_t = frame_inputs(q, ids, emb[t][None], logp[t][None])
            dp, feats, row_len = self._dsp.step(s_t, c_t)
            row_score = keyword_score(self._sp.matcher, feats, mask, dp, n)
            # a keyword's score is that of its best pronunciation (and that one's span)
            best = [a + int(np.argmax(row_score[a:b])) for a, b in self._spans]
            score, plen = row_score[best], row_len[best]
            now = self._frame_end_time(step)
            shift = 0.001 * float(self._sp.metadata["frame_shift_ms"])
            for k in range(len(self._kw)):
                pk = self._peak[k]
                if pk is not None:
                    # fire on the first frame after the peak (or after PEAK_HOLD frames of rising score):
                    # the reported score is then the peak, so one low-threshold run gives every threshold
                    if score[k] > pk[0] and pk[3] < PEAK_HOLD:
                        self._peak[k] = (float(score[k]), now, now - plen[k] * shift, pk[3] + 1)
                        continue
                    self._peak[k] = None
                    self._last_fire[k] = now
                    self._results.append(
                        Detection(self._kw[k].text, pk[0], self._thr[k], max(0.0, pk[2]), pk[1], now)
                    )
                elif score[k] >= self._thr[k] and now - self._last_fire[k] >= REFRACTORY_S:
                    self._peak[k] = (float(score[k]), now, now - plen[k] * shift, 0)

    def results(self) -> list[Detection]:
        """Detections since the last call (and clears them)."""
        out, self._results = self._results, []
        return out
