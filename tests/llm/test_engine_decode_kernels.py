"""The decode-step pieces that exist for speed (issue #6): the two-stage greedy argmax and the
multiply + sum form of decode attention used under torch.compile; both must give what the plain
versions give."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llm.model import decode_attention_sum, grouped_attention  # noqa: E402
from llm.sampling import SamplingParams, greedy_tokens, sample  # noqa: E402


@pytest.mark.parametrize("V", [128256, 8192, 4096 + 64, 301])
def test_greedy_tokens_is_argmax_with_first_index_on_ties(V):
    g = torch.Generator().manual_seed(V)
    for _ in range(20):
        x = torch.randint(-2, 3, (4, V), generator=g).float()  # ties everywhere
        assert torch.equal(greedy_tokens(x), x.argmax(-1))
    x = torch.randn(3, V, generator=g)
    x[0, -1] = x[0, 7] = x.max() + 1  # the same maximum in two chunks: the first wins
    x[2] = 0.5
    got = greedy_tokens(x)
    assert got[0] == 7 and got[2] == 0 and torch.equal(got, x.argmax(-1))
    assert sample(x, [SamplingParams()] * 3, [[]] * 3, [0] * 3, [0] * 3) == x.argmax(-1).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_sum_matches_grouped_attention(dtype):
    g = torch.Generator().manual_seed(1)
    B, H, Hk, T, D = 3, 8, 2, 37, 16
    q = torch.randn(B, 1, H, D, generator=g).to(dtype)
    k = torch.randn(B, Hk, T, D, generator=g).to(dtype)
    v = torch.randn(B, Hk, T, D, generator=g).to(dtype)
    k[1, :, 20:] = 1e4  # beyond row 1's position: must be masked out
    pos = torch.tensor([[36], [19], [0]])
    ref = grouped_attention(q, k, v, pos, 0.25)
    got = decode_attention_sum(q, k, v, pos, 0.25)
    assert got.shape == ref.shape == (B, H, 1, D) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)


def test_compiled_decode_graph_options(llama_dir):
    """compile=True turns on the multiply+sum decode attention; "tuned" scopes inductor's
    coordinate-descent tuning to the graphs' own compiles. (The compiled tokens themselves are
    checked against transformers on CUDA, tests/llm/test_engine_gpu.py.)"""
    import torch._inductor.config as inductor_config

    from llm.cuda_graphs import DecodeGraphs
    from llm.engine import Engine

    eng = Engine.from_pretrained(llama_dir, max_batch_size=2)
    attns = [layer.attention for layer in eng.model.layers]
    plain = DecodeGraphs(eng.model, 2, eng.cache_len)
    assert not plain.tuned and not any(a.decode_sum_attention for a in attns)
    tuned = DecodeGraphs(eng.model, 2, eng.cache_len, compile="tuned")
    assert tuned.tuned and all(a.decode_sum_attention for a in attns)
    before = inductor_config.coordinate_descent_tuning
    with tuned._compile_options():
        assert inductor_config.coordinate_descent_tuning is True
    assert inductor_config.coordinate_descent_tuning == before
    with pytest.raises(ValueError, match="compile"):
        DecodeGraphs(eng.model, 2, eng.cache_len, compile="max")
