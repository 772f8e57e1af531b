"""Model pieces: streaming encoder, and the torch DSP/matcher twin equals the numpy serving code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.confusable import confusables, edit_phonemes
from edge.scoring import NMAX, DSPState, frame_inputs, keyword_rows, score_frames
from kws.matching import Matcher, dsp_partition, frame_targets, streaming_loss
from kws.models.encoder import EncoderArgs, StreamingEncoder, grow, num_params


def _random_inputs(rng, t=70, e=16, v=40):
    emb = rng.standard_normal((t, e)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    logp = np.log(rng.dirichlet(np.ones(v) * 0.3, size=t)).astype(np.float32)
    table = rng.standard_normal((39, e)).astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    return emb, logp, table


def test_encoder_chunked_equals_whole_and_is_causal():
    torch.manual_seed(0)
    m = StreamingEncoder(EncoderArgs()).eval()
    assert 300_000 <= num_params(m) <= 2_000_000
    x = torch.randn(2, 120, 40)
    with torch.no_grad():
        _, emb = m(x)
        cache, outs = m.initial_cache(2), []
        for i in range(0, 120, 10):
            _, e, cache = m.forward_chunk(x[:, i : i + 10], cache)
            outs.append(e)
        torch.testing.assert_close(torch.cat(outs, 1), emb, rtol=1e-4, atol=1e-5)
        y = x.clone()
        y[:, 60:] = torch.randn_like(y[:, 60:])  # the future changes; the past output must not
        _, emb2 = m(y)
    torch.testing.assert_close(emb2[:, :30], emb[:, :30])
    assert not torch.allclose(emb2[:, 30:], emb[:, 30:])


def test_torch_partition_and_matcher_equal_numpy_serving():
    rng = np.random.default_rng()
    emb, logp, table = _random_inputs(rng)
    kws = [list(rng.integers(0, 39, size=n)) for n in (1, 3, 7, NMAX)]
    q, ids, mask, n = keyword_rows(table, kws)
    w_sim, w_ctc = float(rng.uniform(0.2, 1)), float(rng.uniform(0.2, 1))
    st = DSPState(n, w_sim, w_ctc)
    dps, feats = [], []
    for t in range(len(emb)):
        s_t, c_t = frame_inputs(q, ids, emb[t][None], logp[t][None])
        dp, f, _ = st.step(s_t, c_t)
        dps.append(dp)
        feats.append(f)
    dps, feats = np.stack(dps, 1), np.stack(feats, 1)
    k, t = len(kws), len(emb)
    d2, f2 = dsp_partition(torch.tensor(emb)[None].expand(k, t, -1), torch.tensor(logp)[None].expand(k, t, -1),
                           torch.tensor(q), torch.tensor(ids), torch.tensor(n), w_sim, w_ctc)
    ok = dps > -1e6
    assert ok[:, -1].all()
    np.testing.assert_allclose(d2.numpy()[ok], dps[ok], atol=1e-5)
    np.testing.assert_allclose(f2.numpy()[ok], feats[ok], atol=1e-5)
    m = Matcher()
    w = m.to_numpy(w_sim, w_ctc)
    with torch.no_grad():
        u, _ = m(f2, torch.tensor(mask)[:, None].expand(k, t, NMAX), d2, torch.tensor(n)[:, None].expand(k, t))
    np.testing.assert_allclose(torch.sigmoid(u).numpy()[ok], score_frames(w, q, ids, mask, n, emb, logp)[ok],
                               atol=1e-5)


def test_partition_prefers_the_spoken_sequence():
    # frames that replay phonemes 3,4,5 (4 frames each) score the text [3,4,5] above [3,9,5]
    rng = np.random.default_rng()
    _, _, table = _random_inputs(rng)
    emb = np.repeat(table[[3, 4, 5]], 4, axis=0)
    logp = np.full((12, 40), -8.0, np.float32)
    for j, p in enumerate([3, 4, 5]):
        logp[4 * j : 4 * j + 4, p + 1] = -0.01
    q, ids, mask, n = keyword_rows(table, [[3, 4, 5], [3, 9, 5], [5, 4, 3]])
    st = DSPState(n, 1.0, 1.0)
    for t in range(12):
        dp, feats, frames = st.step(*frame_inputs(q, ids, emb[t][None], logp[t][None]))
    assert dp[0] > dp[1] and dp[0] > dp[2]
    assert abs(dp[0] - 1.999) < 1e-3 and 3 <= frames[0] <= 12  # ties may shorten segments


def test_confusables_edit_and_label():
    rng = np.random.default_rng()
    ids = [1, 2, 3, 4, 5]
    for _ in range(200):
        new, mask = edit_phonemes(ids, rng)
        assert new != ids and len(new) == len(mask) and len(new) >= 1
        assert all(m in (0, 1) for m in mask)
    out = confusables(ids, 10, seed=3)
    assert len(out) == 10 and len({tuple(o) for o in out}) == 10 and ids not in out
    assert out == confusables(ids, 10, seed=3)


def test_sal_weights_anchor_frames():
    t = 40
    anchor, label = torch.tensor([20, 20]), torch.tensor([1, 0])
    y, valid = frame_targets(anchor, label, t)
    assert y[0, 20:29].eq(1).all() and y[0, :18].eq(0).all() and not valid[0, 18:20].any()
    assert y[1].eq(0).all() and valid[1].all()
    # an error at the anchor costs more under SAL than an equal error far from it
    base = torch.full((1, t), -3.0)
    near, far = base.clone(), base.clone()
    near[0, 21] = far[0, 27] = -3.0  # equally wrong on two positive frames
    near[0, 27] = far[0, 21] = 3.0
    a, lab = anchor[:1], label[:1]
    yy, vv = frame_targets(a, lab, t)
    assert streaming_loss(near, yy, vv, a, "sal") > streaming_loss(far, yy, vv, a, "sal")
    assert torch.isclose(streaming_loss(near, yy, vv, a, "ce"), streaming_loss(far, yy, vv, a, "ce"))


def test_padding_width_does_not_change_scores():
    rng = np.random.default_rng()
    emb, logp, table = _random_inputs(rng, t=40)
    kws = [list(rng.integers(0, 39, size=n)) for n in (2, 5)]
    w = Matcher().to_numpy(1.0, 1.0)
    narrow = score_frames(w, *keyword_rows(table, kws), emb, logp)
    wide = score_frames(w, *keyword_rows(table, kws, width=NMAX), emb, logp)
    np.testing.assert_allclose(narrow, wide, atol=1e-6)


def test_grown_encoder_computes_the_same_then_trains_its_new_capacity():
    torch.manual_seed(0)
    small = StreamingEncoder(EncoderArgs(dim=32, hidden=48, dilations=[1, 2])).eval()
    big_args = EncoderArgs(dim=32, hidden=96, dilations=[1, 2, 4])
    big = grow(small, big_args).eval()
    assert num_params(big) > num_params(small)
    x = torch.randn(2, 30, 40)
    a, b = small(x), big(x)
    for u, v in zip(a, b, strict=True):
        assert torch.allclose(u, v, atol=1e-6)
    # the new weights receive gradient (zero output weights are not a dead end)
    big.train()
    big(x)[0].sum().backward()
    assert big.blocks[0].w2.weight.grad[:, 48:].abs().sum() > 0
    assert big.blocks[2].w2.weight.grad.abs().sum() > 0
    # shapes that cannot be grown without changing the function are refused
    with pytest.raises(ValueError):
        grow(small, EncoderArgs(dim=64, hidden=96, dilations=[1, 2]))
    with pytest.raises(ValueError):
        grow(small, EncoderArgs(dim=32, hidden=96, dilations=[2, 1]))
