"""Keyword-scoring arithmetic (numpy), shared by serving and by training-time evaluation.

Per enrolled keyword with phonemes p_1..p_N (N <= NMAX) and per 20 ms encoder frame t:
- s[i, t] = <table[p_i], e_t>: cosine similarity between the audio-compliant text vector of
  phoneme i (the averaged encoder embedding of frames aligned to that phoneme) and the frame.
- c[i, t] = CTC log-posterior of p_i at t, floored at CTC_FLOOR and mapped to [0, 1].
- DSP: a monotonic partition of the frames ending at t into N contiguous segments, segment i of
  1..LMAX frames, maximising sum_i w_sim * mean(s[i, seg]) + w_ctc * max(c[i, seg]); the start is
  free (subsequence match), so the partition is computed online, one frame at a time.
- The matcher reads per-phoneme features of the best partition (mean and max similarity, peak
  posterior, duration): a per-phoneme MLP gives subsequence-level logits, pooled features give the
  utterance-level logit whose sigmoid is the keyword score at t.
`kws.matching` implements the same recurrences in torch for training; tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NMAX = 20  # longest keyword trained on, in phonemes (SLiCK: keywords are length-constrained)
MAX_PHONES = 2 * NMAX  # enrollable at serving: the matcher is per-phoneme + pooled, so it extrapolates
LMAX = 12  # longest phoneme segment, in 20 ms frames
CTC_FLOOR = -10.0
N_FEAT = 4
NEG = -1e9


def ctc_unit(logp: np.ndarray) -> np.ndarray:
    """Map log-posteriors to [0, 1]: floor at CTC_FLOOR, then affine."""
    return np.maximum(logp, CTC_FLOOR) / -CTC_FLOOR + 1.0


@dataclass
class MatcherWeights:
    """Numpy weights of the matcher (saved as matcher.npz)."""

    w1: np.ndarray  # [F, H]
    b1: np.ndarray
    w2: np.ndarray  # [H, H]
    b2: np.ndarray
    w3: np.ndarray  # [H] per-phoneme (subsequence-level) logit
    b3: np.ndarray
    w4: np.ndarray  # [2H + 2, H2]
    b4: np.ndarray
    w5: np.ndarray  # [H2] utterance-level logit
    b5: np.ndarray
    w_sim: float = 1.0
    w_ctc: float = 1.0
    use_matcher: bool = True
    gate: float = NEG  # rows whose partition score is below this skip the matcher (score 0)

    @classmethod
    def load(cls, path) -> MatcherWeights:
        """Read matcher.npz."""
        z = np.load(path)
        kw = {k: z[k].astype(np.float32) for k in ("w1", "b1", "w2", "b2", "w3", "b3", "w4", "b4", "w5", "b5")}
        gate = float(z["gate"]) if "gate" in z.files else NEG
        return cls(**kw, w_sim=float(z["w_sim"]), w_ctc=float(z["w_ctc"]), use_matcher=bool(z["use_matcher"]),
                   gate=gate)

    def save(self, path) -> None:
        """Write matcher.npz."""
        d = {k: getattr(self, k) for k in ("w1", "b1", "w2", "b2", "w3", "b3", "w4", "b4", "w5", "b5")}
        np.savez(path, **d, w_sim=self.w_sim, w_ctc=self.w_ctc, use_matcher=self.use_matcher, gate=self.gate)


def matcher_logits(w: MatcherWeights, feats: np.ndarray, mask: np.ndarray, dp: np.ndarray, n: np.ndarray):
    """feats [K, NMAX, F], mask [K, NMAX] bool, dp [K] (mean segment score), n [K] -> (utt [K], sub [K, NMAX])."""
    h = np.maximum(feats @ w.w1 + w.b1, 0.0)
    h = np.maximum(h @ w.w2 + w.b2, 0.0)  # [K, NMAX, H]
    sub = h @ w.w3 + w.b3
    m = mask[..., None]
    mean = (h * m).sum(1) / np.maximum(m.sum(1), 1)
    mn = np.where(m, h, np.inf).min(1)
    mn = np.where(np.isfinite(mn), mn, 0.0)
    u = np.concatenate([mean, mn, dp[:, None], (n / NMAX)[:, None]], axis=1).astype(np.float32)
    u = np.maximum(u @ w.w4 + w.b4, 0.0)
    return u @ w.w5 + w.b5, sub


class DSPState:
    """Online DSP partition for K keyword rows (padded to NMAX phonemes); one `step` per frame.

    History lives in ring buffers over the last LMAX frames (slot `pos` is the newest), so a step
    copies only what it reads.
    """

    def __init__(self, n: np.ndarray, w_sim: float, w_ctc: float, width: int | None = None):
        self.n = np.asarray(n, np.int64)  # [K] phonemes per row
        k = len(self.n)
        # rows are padded only to the longest enrolled keyword: the cost grows with width squared
        width = width or int(self.n.max())
        self.width = width
        self.w_sim, self.w_ctc = w_sim, w_ctc
        self.frames = 0
        self.pos = 0
        self.s_ring = np.zeros((k, width, LMAX), np.float32)
        self.c_ring = np.zeros((k, width, LMAX), np.float32)
        self.d_ring = np.full((k, width, LMAX), NEG, np.float32)  # D at the frame held in each slot
        self.p_ring = np.zeros((k, width, LMAX, width, N_FEAT), np.float32)  # path features per slot
        self._inv_l = 1.0 / np.arange(1, LMAX + 1, dtype=np.float32)
        self._dur = np.arange(1, LMAX + 1, dtype=np.float32) / LMAX
        self._rows = np.arange(k)[:, None]
        self._ph = np.arange(width)

    def step(self, s_t: np.ndarray, c_t: np.ndarray):
        """s_t, c_t [K, width] for the new frame -> (dp [K] mean segment score, feats [K, width, F], frames)."""
        k, width = len(self.n), self.width
        self.frames += 1
        prev_slots = (self.pos - np.arange(LMAX)) % LMAX  # slot of t - l, l = 1..LMAX (before the write)
        self.pos = (self.pos + 1) % LMAX
        self.s_ring[:, :, self.pos] = s_t
        self.c_ring[:, :, self.pos] = c_t
        order = (self.pos - np.arange(LMAX)) % LMAX  # newest first: slot of t - l + 1
        s_l = self.s_ring[:, :, order]
        ms = np.cumsum(s_l, axis=2) * self._inv_l  # mean over the last l frames
        xs = np.maximum.accumulate(s_l, axis=2)
        xc = np.maximum.accumulate(self.c_ring[:, :, order], axis=2)
        g = self.w_sim * ms + self.w_ctc * xc  # [K, width, LMAX]
        prev = np.empty_like(g)
        prev[:, 0] = np.where(np.arange(1, LMAX + 1) <= self.frames, 0.0, NEG)  # free start
        prev[:, 1:] = self.d_ring[:, :-1][:, :, prev_slots]
        cand = prev + g
        best = cand.argmax(axis=2)  # [K, width], l* - 1
        bi = best[..., None]
        d_t = np.take_along_axis(cand, bi, axis=2)[..., 0]
        # path features: those of phoneme i-1's path ending at t - l*, plus phoneme i's segment
        src = np.zeros((k, width, width, N_FEAT), np.float32)
        src[:, 1:] = self.p_ring[self._rows, self._ph[None, :-1], prev_slots[best[:, 1:]]]
        src[:, self._ph, self._ph, 0] = np.take_along_axis(ms, bi, 2)[..., 0]
        src[:, self._ph, self._ph, 1] = np.take_along_axis(xs, bi, 2)[..., 0]
        src[:, self._ph, self._ph, 2] = np.take_along_axis(xc, bi, 2)[..., 0]
        src[:, self._ph, self._ph, 3] = self._dur[best]
        self.d_ring[:, :, self.pos] = d_t
        self.p_ring[:, :, self.pos] = src
        rows = self._rows[:, 0]
        last = self.n - 1
        dp = d_t[rows, last] / self.n
        feats = src[rows, last]  # [K, width, F]
        frames = np.rint(feats[..., 3] * LMAX).sum(axis=1).astype(np.int64)
        return dp, feats, frames


def keyword_rows(table: np.ndarray, phoneme_ids: list[list[int]], width: int | None = None):
    """Text side: padded phoneme vectors [K, W, E], ids [K, W], mask [K, W], n [K].

    W (default: the longest keyword) <= NMAX; padding never changes a score (masked).
    """
    k = len(phoneme_ids)
    for p in phoneme_ids:
        if not p:
            raise ValueError("keyword has no phonemes")
    width = width or max(len(p) for p in phoneme_ids)
    q = np.zeros((k, width, table.shape[1]), np.float32)
    ids = np.zeros((k, width), np.int64)
    for r, p in enumerate(phoneme_ids):
        q[r, : len(p)] = table[p]
        ids[r, : len(p)] = p
    n = np.array([len(p) for p in phoneme_ids], np.int64)
    mask = np.arange(width)[None] < n[:, None]
    return q, ids, mask, n


def frame_inputs(q, ids, emb_t: np.ndarray, logp_t: np.ndarray):
    """One frame per row: emb_t [K or 1, E], logp_t [K or 1, V] -> s_t, c_t [K, NMAX].

    Phoneme id j is CTC token j + 1 (token 0 is the blank).
    """
    s = np.einsum("kne,ke->kn", q, np.broadcast_to(emb_t, (q.shape[0], emb_t.shape[-1])))
    lp = np.broadcast_to(logp_t, (q.shape[0], logp_t.shape[-1]))
    c = ctc_unit(np.take_along_axis(lp, ids + 1, axis=1))
    return s.astype(np.float32), c.astype(np.float32)


def score_frames(w: MatcherWeights, q, ids, mask, n, emb: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """Scores [K, T] of K keyword rows over T frames (emb [T, E] shared, or [K, T, E] per row)."""
    st = DSPState(n, w.w_sim, w.w_ctc, width=q.shape[1])
    per_row = emb.ndim == 3
    out = np.zeros((len(n), emb.shape[-2]), np.float32)
    for t in range(emb.shape[-2]):
        e = emb[:, t] if per_row else emb[t][None]
        lp = logp[:, t] if per_row else logp[t][None]
        s_t, c_t = frame_inputs(q, ids, e, lp)
        dp, feats, _ = st.step(s_t, c_t)
        out[:, t] = keyword_score(w, feats, mask, dp, n)
    return out


def keyword_score(w: MatcherWeights, feats, mask, dp, n) -> np.ndarray:
    """Probability-like score in [0, 1] per row from the partition features."""
    if not w.use_matcher:
        # DSP only: the mean segment score mapped into [0, 1]
        return np.clip(dp / (w.w_sim + w.w_ctc), 0.0, 1.0).astype(np.float32)
    out = np.zeros(len(dp), np.float32)
    live = dp >= w.gate  # a cheap pre-filter: most rows at most frames are far from matching
    if live.any():
        logit, _ = matcher_logits(w, feats[live], mask[live], dp[live], n[live])
        out[live] = 1.0 / (1.0 + np.exp(-np.clip(logit, -30, 30)))
    return out
