"""Torch twin of `edge.scoring`: DSP partition, SLiCK-style matcher, and the streaming losses.

The recurrences are those of `edge.scoring.DSPState`, computed here for whole utterances and all
end frames at once (a loop over phonemes, vectorised over batch, frames and segment lengths), so
training sees exactly what serving computes; `tests/kws/test_model*.py` compares the two.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.scoring import CTC_FLOOR, LMAX, N_FEAT, NEG, NMAX, MatcherWeights


def _lags(x: torch.Tensor, first: int, fill: float, idx: torch.Tensor) -> torch.Tensor:
    """x [B, T] -> [B, T, LMAX] with [..., j] = x[t - first - j] (fill before the start).

    idx [T, LMAX] = t + LMAX - 1 - j indexes the left-padded x for both values of `first`.
    """
    padded = F.pad(x, (LMAX - 1 + first, 0), value=fill)  # [B, T + LMAX - 1 + first]
    return padded[:, idx]


def dsp_partition(emb, logp, q, ids, n, w_sim: float, w_ctc: float, n_max: int | None = None):
    """Best monotonic partition ending at every frame.

    emb [B, T, E], logp [B, T, V], q [B, NMAX, E] text vectors, ids [B, NMAX], n [B] ->
    dp [B, T] (mean segment score), feats [B, T, NMAX, F] per-phoneme features of that partition.
    n_max: max(n) when the caller knows it (saves a device sync).
    """
    b, t, _ = emb.shape
    dev = emb.device
    tt = torch.arange(t, device=dev)
    d_prev = None
    p_prev = torch.zeros(b, t, NMAX, N_FEAT, device=dev, dtype=emb.dtype)
    d_fin = torch.full((b, t), NEG, device=dev, dtype=emb.dtype)
    p_fin = torch.zeros_like(p_prev)
    inv_l = 1.0 / torch.arange(1, LMAX + 1, device=dev, dtype=emb.dtype)
    idx = tt[:, None] + (LMAX - 1) - torch.arange(LMAX, device=dev)[None]  # [T, L]
    eye = torch.eye(NMAX, device=dev, dtype=emb.dtype)
    first_ok = torch.where(torch.arange(1, LMAX + 1, device=dev)[None] <= (tt[:, None] + 1), 0.0, NEG)
    first_prev = first_ok.to(emb.dtype)[None].expand(b, t, LMAX)  # phoneme 0 may start anywhere
    for i in range(int(n.max()) if n_max is None else n_max):
        s = torch.einsum("bte,be->bt", emb, q[:, i])
        c = torch.clamp(logp.gather(2, (ids[:, i] + 1)[:, None, None].expand(b, t, 1))[..., 0], min=CTC_FLOOR)
        c = c / -CTC_FLOOR + 1.0
        s_l = _lags(s, 0, 0.0, idx)  # [B, T, L]: s[t - l + 1]
        c_l = _lags(c, 0, 0.0, idx)
        ms = torch.cumsum(s_l, dim=2) * inv_l
        xs = torch.cummax(s_l, dim=2).values
        xc = torch.cummax(c_l, dim=2).values
        g = w_sim * ms + w_ctc * xc
        prev = first_prev if i == 0 else _lags(d_prev, 1, NEG, idx)  # D[i - 1, t - l]
        cand = prev + g
        best = cand.argmax(dim=2)  # [B, T]
        d_i = cand.gather(2, best[..., None])[..., 0]
        seg = torch.stack(
            [
                ms.gather(2, best[..., None])[..., 0],
                xs.gather(2, best[..., None])[..., 0],
                xc.gather(2, best[..., None])[..., 0],
                (best + 1).to(emb.dtype) / LMAX,
            ],
            dim=-1,
        )  # [B, T, F]
        if i == 0:
            base = torch.zeros_like(p_prev)
        else:
            src_t = (tt[None] - best - 1).clamp(min=0)  # frame where phoneme i-1 ended
            base = p_prev.gather(1, src_t[:, :, None, None].expand(b, t, NMAX, N_FEAT))
        onehot = eye[i][None, None, :, None]
        p_i = base * (1 - onehot) + seg[:, :, None, :] * onehot
        is_last = (n == i + 1)[:, None]
        d_fin = torch.where(is_last, d_i, d_fin)
        p_fin = torch.where(is_last[..., None, None], p_i, p_fin)
        d_prev, p_prev = d_i, p_i
    return d_fin / n[:, None].to(emb.dtype), p_fin


class Matcher(nn.Module):
    """Per-phoneme MLP (subsequence-level logits) + pooled MLP (utterance-level logit)."""

    def __init__(self, hidden: int = 32, hidden2: int = 32):
        super().__init__()
        self.l1 = nn.Linear(N_FEAT, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, 1)
        self.l4 = nn.Linear(2 * hidden + 2, hidden2)
        self.l5 = nn.Linear(hidden2, 1)

    def forward(self, feats, mask, dp, n):
        """feats [..., NMAX, F], mask [..., NMAX], dp [...], n [...] -> (utt [...], sub [..., NMAX])."""
        h = F.relu(self.l2(F.relu(self.l1(feats))))
        sub = self.l3(h)[..., 0]
        m = mask[..., None].to(h.dtype)
        mean = (h * m).sum(-2) / m.sum(-2).clamp(min=1)
        mn = torch.where(mask[..., None], h, torch.full_like(h, 1e4)).min(-2).values
        mn = torch.where(mn > 1e3, torch.zeros_like(mn), mn)
        u = torch.cat([mean, mn, dp[..., None], (n.to(h.dtype) / NMAX)[..., None]], dim=-1)
        return self.l5(F.relu(self.l4(u)))[..., 0], sub

    def to_numpy(self, w_sim: float, w_ctc: float, use_matcher: bool = True) -> MatcherWeights:
        """Export as `edge.scoring.MatcherWeights` (x @ W layout)."""

        def a(t):
            return t.detach().cpu().float().numpy().astype(np.float32)

        return MatcherWeights(
            w1=a(self.l1.weight.T), b1=a(self.l1.bias), w2=a(self.l2.weight.T), b2=a(self.l2.bias),
            w3=a(self.l3.weight[0]), b3=a(self.l3.bias[0]), w4=a(self.l4.weight.T), b4=a(self.l4.bias),
            w5=a(self.l5.weight[0]), b5=a(self.l5.bias[0]), w_sim=w_sim, w_ctc=w_ctc, use_matcher=use_matcher,
        )


def frame_targets(anchor: torch.Tensor, label: torch.Tensor, t: int, pre: int = 2, post: int = 8, off: int = 20):
    """Frame labels and validity for the streaming decision.

    anchor [R] keyword-end frame, label [R] 1/0 -> y [R, T], valid [R, T]. A positive row is 1 from
    the anchor to `post` frames after it, 0 more than `pre` frames before it or `off` frames after
    it, unlabelled in between (the keyword is partly said, or the match tails off).
    """
    tt = torch.arange(t, device=anchor.device)[None]
    a = anchor[:, None]
    pos = label[:, None] > 0
    y = (pos & (tt >= a) & (tt <= a + post)).float()
    gap = pos & (((tt >= a - pre) & (tt < a)) | ((tt > a + post) & (tt <= a + off)))
    return y, ~gap


def streaming_loss(logits, y, valid, anchor, mode: str = "sal_focal", beta: float = 4.0, tau: float = 5.0,
                   gamma: float = 2.0):
    """Frame-wise BCE of the streaming decision: "ce" plain, "sal" anchor-weighted, "sal_focal" SAL x focal.

    Streaming Anchor Loss: weight 1 + beta * exp(-|t - anchor| / tau), highest at the keyword end,
    so the few frames where the decision must flip dominate the loss.
    """
    ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    w = valid.float()
    if mode in ("sal", "sal_focal"):
        tt = torch.arange(logits.shape[1], device=logits.device)[None]
        w = w * (1.0 + beta * torch.exp(-(tt - anchor[:, None]).abs().float() / tau))
    if mode == "sal_focal":
        p = torch.sigmoid(logits)
        pt = torch.where(y > 0.5, p, 1 - p)
        w = w * (1 - pt).detach().pow(gamma) * 4.0
    return (w * ce).sum() / valid.float().sum().clamp(min=1)
