"""The sampler against transformers' logits processors, its counter-based random stream, and its
statistics: the empirical token frequencies of many draws match softmax(warped logits), truncated
tokens never appear. Seeds are fixed, so the statistical bounds are checked once and cannot flake."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llm.sampling import (  # noqa: E402
    M32,
    SamplingParams,
    apply_repetition_penalty,
    gumbel_noise,
    hash32,
    row_params,
    sample,
    sample_tokens,
    seed_key,
    vocab_hash,
    warp,
    warp_rows,
)


def hf_warp(logits, p: SamplingParams):
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    x = logits[None].clone()
    x = TemperatureLogitsWarper(p.temperature)(None, x)
    if p.top_k:
        x = TopKLogitsWarper(p.top_k)(None, x)
    if p.top_p < 1:
        x = TopPLogitsWarper(p.top_p)(None, x)
    return x[0]


def _triple32(x: int) -> int:  # the reference: uint32 arithmetic written out
    x ^= x >> 17
    x = (x * 0xED5AD4BB) & 0xFFFFFFFF
    x ^= x >> 11
    x = (x * 0xAC4C1B51) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x31848BAB) & 0xFFFFFFFF
    return x ^ (x >> 14)


def _draws(logits: torch.Tensor, p: SamplingParams, n: int, seed: int = 0, by_seed: bool = False) -> torch.Tensor:
    """n tokens for one row of logits [V]: token indices 0..n-1 of one seed, or (by_seed) the first
    token of seeds seed..seed+n-1; drawn in batches as the engine's graphs would draw them."""
    V = logits.shape[-1]
    keys = [seed_key(seed + i) for i in range(n)] if by_seed else [seed_key(seed)] * n
    ints, floats = row_params([p] * n, keys, [0] * n if by_seed else list(range(n)))
    return sample_tokens(logits[None].expand(n, V), torch.tensor(ints), torch.tensor(floats, dtype=torch.float32),
                         vocab_hash(V, logits.device), None, p.truncates)


def _chi2_ok(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, float]:
    """(chi-square statistic, its 0.999 quantile) over the categories with expected count >= 5 (the
    rest pooled); Wilson-Hilferty approximation of the quantile."""
    n = counts.sum()
    exp = probs * n
    big = exp >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]]).double()
    e = torch.cat([exp[big], exp[~big].sum()[None]]).double()
    keep = e > 0
    stat = float(((obs[keep] - e[keep]) ** 2 / e[keep]).sum())
    k = int(keep.sum()) - 1
    z = 3.09  # one-sided 0.999
    return stat, k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8),
                                                     (0.9, 20, 0.5), (1.0, 1, 1.0)])
def test_warping_matches_transformers(temperature, top_k, top_p):
    logits = torch.randn(97) * 3
    p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    ours, ref = warp(logits, p), hf_warp(logits, p)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    keep = ~torch.isinf(ref)
    torch.testing.assert_close(ours[keep], ref[keep])
    if top_k and top_p == 1.0:
        assert int(keep.sum()) == top_k


def test_batched_warp_keeps_each_rows_settings():
    """One batch of rows with different settings equals each row warped alone; rows with top_k 0 and
    top_p 1 (or greedy rows) are untouched."""
    logits = torch.randn(5, 300) * 2
    ps = [SamplingParams(temperature=0.8, top_k=7), SamplingParams(temperature=1.2),
          SamplingParams(temperature=1.0, top_p=0.6), SamplingParams(), SamplingParams(temperature=0.5, top_k=3,
                                                                                        top_p=0.9)]
    ints, floats = row_params(ps, [0] * 5, [0] * 5)
    f = torch.tensor(floats, dtype=torch.float32)
    got = warp_rows(logits, f[0], torch.tensor(ints[2]), f[1])
    for i, p in enumerate(ps):
        if p.greedy:
            assert torch.equal(got[i], logits[i])
        else:
            assert torch.equal(got[i], warp(logits[i], p)), i
    assert torch.equal(got[1], logits[1] / torch.tensor(1.2))


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(50) * 2
    hist = [3, 7, 7, 11, 49]
    ours = apply_repetition_penalty(logits, torch.tensor(sorted(set(hist))), 1.3)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([hist]), logits[None].clone())[0]
    torch.testing.assert_close(ours, ref)
    assert ours[4] == logits[4]  # unseen ids untouched


def test_greedy_rows_take_the_argmax_and_penalty_changes_it():
    logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, 0.0, 1.9]])
    ps = [SamplingParams(), SamplingParams(repetition_penalty=2.0)]
    assert sample(logits, ps, [[], [0]], [0, 0], [0, 0]) == [1, 2]


def test_hash_is_triple32_on_ints_and_tensors():
    xs = [0, 1, 2, 12345, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF] + list(range(1000, 1100))
    ref = [_triple32(x) for x in xs]
    assert hash32(torch.tensor(xs)).tolist() == ref and [hash32(x) for x in xs] == ref
    assert len(set(vocab_hash(5000, torch.device("cpu")).tolist())) == 5000  # a bijection
    assert seed_key(7) == seed_key(7 + (1 << 64)) and seed_key(7) != seed_key(8)
    assert 0 <= seed_key(-1) < 1 << 32


def test_gumbel_noise_is_a_pure_function_with_gumbel_moments():
    table = vocab_hash(4096, torch.device("cpu"))
    keys = torch.tensor([seed_key(s) for s in range(64)])
    n = torch.arange(64) * 7
    g = gumbel_noise(keys, n, table)
    assert torch.equal(g[5], gumbel_noise(keys[5:6], n[5:6], table)[0])  # no batch or generator state
    assert not torch.equal(g[5], gumbel_noise(keys[5:6], n[5:6] + 1, table)[0])
    assert g.isfinite().all() and float(g.min()) > -2.82 and float(g.max()) < 16.7
    assert abs(float(g.mean()) - 0.5772) < 0.01 and abs(float(g.var()) - math.pi ** 2 / 6) < 0.02
    # neighbouring token indices and seeds are uncorrelated
    for a, b in ((g[:, :-1], g[:, 1:]), (g[:-1], g[1:])):
        assert abs(float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])) < 0.01


@pytest.mark.parametrize("by_seed", [False, True])
def test_draws_follow_softmax_of_the_logits(by_seed):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(40, generator=g) * 1.5
    p = SamplingParams(temperature=0.9)
    toks = _draws(logits, p, 40000, seed=5, by_seed=by_seed)
    counts = torch.bincount(toks, minlength=40).float()
    probs = torch.softmax(logits / 0.9, -1)
    stat, limit = _chi2_ok(counts, probs)
    assert stat < limit, (stat, limit)
    assert 0.5 * float((counts / counts.sum() - probs).abs().sum()) < 0.015  # total variation


def test_consecutive_draws_are_independent():
    logits = torch.tensor([0.0, 0.3, -0.4, 0.1])
    toks = _draws(logits, SamplingParams(temperature=1.0), 40001, seed=9)
    pair = torch.bincount(toks[:-1] * 4 + toks[1:], minlength=16).float()
    probs = torch.softmax(logits, -1)
    stat, limit = _chi2_ok(pair, (probs[:, None] * probs[None]).flatten())
    assert stat < limit, (stat, limit)


@pytest.mark.parametrize("top_k,top_p", [(6, 1.0), (0, 0.7), (10, 0.8), (1, 1.0)])
def test_truncated_draws_stay_in_the_kept_set_and_follow_it(top_k, top_p):
    g = torch.Generator().manual_seed(top_k * 7 + int(top_p * 10))
    logits = torch.randn(200, generator=g) * 2
    p = SamplingParams(temperature=1.1, top_k=top_k, top_p=top_p)
    ref = hf_warp(logits, p)  # transformers' kept set and renormalised distribution
    probs = torch.softmax(ref, -1)
    toks = _draws(logits, p, 30000, seed=top_k)
    counts = torch.bincount(toks, minlength=200).float()
    kept = ~torch.isinf(ref)
    assert counts[~kept].sum() == 0 and int(kept.sum()) < 200
    if int(kept.sum()) > 1:
        stat, limit = _chi2_ok(counts[kept], probs[kept])
        assert stat < limit, (stat, limit)
    else:
        assert toks.unique().tolist() == [int(logits.argmax())]


def test_mixed_batch_keeps_each_rows_settings_and_rows_are_batch_independent():
    torch.manual_seed(0)
    logits = torch.randn(4, 40)
    ps = [SamplingParams(), SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=2.0, seed=5),
          SamplingParams(temperature=0.7, top_p=0.5)]
    keys, steps = [seed_key(s) for s in (0, 1, 5, 6)], [3, 0, 9, 2]
    out = sample(logits, ps, [[]] * 4, keys, steps)
    assert out[0] == int(logits[0].argmax()) and out[1] == int(logits[1].argmax())
    for i in range(4):  # each row alone draws what it drew in the batch
        assert sample(logits[i:i + 1], [ps[i]], [[]], [keys[i]], [steps[i]]) == [out[i]]
    draws = {sample(logits[3:4], [ps[3]], [[]], [keys[3]], [s])[0] for s in range(300)}
    assert draws <= set(torch.nonzero(~torch.isinf(hf_warp(logits[3], ps[3]))).flatten().tolist())


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(temperature=-1), dict(top_k=-2), dict(top_p=1.5),
                                 dict(repetition_penalty=0)])
def test_invalid_params_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_stop_given_as_a_string_becomes_a_list():
    assert SamplingParams(stop="\n").stop == ["\n"]



def test_uniforms_of_the_extreme_hashes_stay_inside_the_interval():
    """The smallest and largest hashes give finite noise (with 24 bits the top one gave u = 1, g = inf)."""
    from llm.sampling import M32, uniform

    u = uniform(torch.tensor([0, 511, 512, M32 - 511, M32 - 512, M32]))
    assert (u > 0).all() and (u < 1).all() and len(set(u.tolist())) == 4
    assert torch.isfinite(-torch.log(-torch.log(u))).all()


# ---- the host path against the graphs' formulation ----------------------------------------------
def _ref_cum(x: torch.Tensor, k: int) -> torch.Tensor:
    """`warp_rows`' ascending cumulative probabilities of one warped row [V] after top-k."""
    s = torch.sort(x, stable=True).values
    if k:
        s = s.masked_fill(s < s[-k], float("-inf"))
    return s.softmax(-1).cumsum(-1)


def test_host_hash_and_noise_equal_the_reference_bit_for_bit():
    from llm.sampling_host import _gumbel, _hash32_np, _row_hash

    g = torch.Generator().manual_seed(11)
    xs = torch.cat([torch.randint(0, 1 << 32, (20000,), generator=g), torch.tensor([0, 1, M32 - 1, M32])])
    assert _hash32_np(xs.numpy().astype("uint32")).astype("int64").tolist() == hash32(xs).tolist()
    V = 50257
    for B in (3, 20):  # the row hash in Python ints and in numpy
        keys = [seed_key(s) for s in range(B - 1)] + [seed_key(1 << 40)]
        steps = [int(v) for v in torch.randint(0, 1 << 20, (B - 1,), generator=g)] + [(1 << 33) + 5]
        ref = gumbel_noise(torch.tensor(keys), torch.tensor(steps), vocab_hash(V, torch.device("cpu")))
        ids = torch.randint(0, V, (B, 777), generator=g)
        row = _row_hash(keys, steps)
        got = torch.from_numpy(_gumbel(row, ids.numpy(), V))
        assert torch.equal(got.view(torch.int32), ref.gather(1, ids).view(torch.int32))
        assert torch.equal(torch.from_numpy(_gumbel(row, None, V)).view(torch.int32), ref.view(torch.int32))


def test_largest_finds_the_n_largest_with_and_without_the_threshold():
    """The threshold pass and its fallback (a row whose sampled values, every 16th, are its largest:
    the threshold then keeps only the sample's top few)."""
    from llm.sampling_host import _largest

    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 8192, generator=g)
    x[3] = -torch.arange(8192.0)
    x[3, ::16] += 1e5
    for n in (1, 51, 300):
        vals, ids, counts = _largest(x.numpy(), n)
        assert (counts >= n).all() and (counts <= vals.shape[1]).all()
        ref = x.topk(n, -1).values
        assert torch.equal(torch.from_numpy(vals[:, :n].copy()), ref)
        assert torch.equal(x.gather(1, torch.from_numpy(ids[:, :n].copy())), ref)


@pytest.mark.parametrize("vocab", [8192, 50257, 131072])
def test_host_candidates_keep_the_reference_set_at_exact_top_p_boundaries(vocab):
    """top_p chosen so that 1 - top_p is exactly one of the reference's cumulative sums, where a sum
    one ulp off flips the decision: the kept sets (and their values) are still the reference's."""
    from llm.sampling_host import _settings, _sorted, _topk

    g = torch.Generator().manual_seed(vocab)
    for trial in range(6 if vocab < 100000 else 2):
        logits = torch.randn(vocab, generator=g) * (1.0, 3.0, 6.0)[trial % 3]
        if trial % 2:
            logits = logits.bfloat16().float()  # ties, as bf16 models give
        t, k = (0.7, 1.0, 1.3)[trial % 3], (0, 40, 300)[trial % 3] if trial < 3 else (0, 1000, 7)[trial % 3]
        x = logits / torch.tensor(t)
        cum = _ref_cum(x, k)
        nz = torch.nonzero((cum > 0) & (cum < 0.999)).flatten()
        mc = float(cum[nz[int(torch.randint(0, len(nz), (1,), generator=g))]])
        p = SamplingParams(temperature=t, top_k=k, top_p=1.0 - mc)
        ref = warp_rows(logits[None], torch.tensor([t]), torch.tensor([k]), torch.tensor([mc]))[0]
        t_, k_, mc_ = _settings(((p.temperature, p.top_k, p.top_p),))
        vals, ids, keep = (_topk if k else _sorted)(logits[None].numpy(), t_, k_, mc_)
        kept = torch.from_numpy(ids[keep])
        assert sorted(kept.tolist()) == torch.nonzero(ref.isfinite()).flatten().tolist(), trial
        assert torch.equal(torch.from_numpy(vals[keep]), ref[kept])


def test_host_sampler_equals_the_reference_formulation():
    """Tokens of `sample` (the host's fast path) == `sample_reference` (the graphs' arithmetic over
    the whole vocabulary) over many seeds, steps, parameters, mixed batches, ties and penalties."""
    import random

    from llm.sampling import sample_reference

    rng = random.Random(6)

    def params():
        return SamplingParams(temperature=rng.choice([0.0, 0.6, 1.0, 1.4]), top_k=rng.choice([0, 0, 1, 7, 50, 1500]),
                              top_p=rng.choice([1.0, 1.0, 0.95, 0.7, 0.2]),
                              repetition_penalty=rng.choice([1.0, 1.0, 1.3, 0.7]))

    rows, threads = 0, torch.get_num_threads()
    for V, batches in ((8192, 120), (1000, 60), (32001, 60), (131072, 8)):
        for _ in range(batches):
            B = rng.choice([1, 3, 8])
            ps = [params()] * B if rng.random() < 0.5 else [params() for _ in range(B)]
            logits = torch.randn(B, V) * rng.choice([1.0, 3.0, 8.0])
            if rng.random() < 0.3:
                logits = logits.bfloat16().float()
            hist = [[rng.randrange(V) for _ in range(rng.randrange(0, 40))] for _ in range(B)]
            keys = [seed_key(rng.randrange(1 << 62)) for _ in range(B)]
            steps = [rng.randrange(5000) for _ in range(B)]
            got = sample(logits, ps, hist, keys, steps)
            assert got == sample_reference(logits, ps, hist, keys, steps), (V, ps, keys, steps)
            rows += B
    assert rows > 600
    assert torch.get_num_threads() == threads  # the host path gives back torch's thread count


def test_host_top_p_sums_match_under_a_lane_sensitive_softmax():
    """torch's generic CPU kernels (ATEN_CPU_CAPABILITY=default) sum the softmax in 8 lanes by
    position, unlike the AVX2/AVX512 ones: the short rows of `_nucleus` must keep every value's lane
    (without the alignment this run finds other kept sets)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    test = f"{__file__}::test_host_candidates_keep_the_reference_set_at_exact_top_p_boundaries"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "3 passed" in r.stdout
