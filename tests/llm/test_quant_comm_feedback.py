"""Error feedback and the chunked one-shot pipeline of the quantized all-reduce (CPU, gloo, 2 ranks)."""

from __future__ import annotations

import pytest
import torch

from llm.parallel.launch import run_ranks

pytestmark = pytest.mark.timeout(240)
H = 256
SITES = [f"layers.{i // 2}.{'mlp' if i % 2 else 'attn'}" for i in range(8)]


def partial(rank: int, site: int, n: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * site + rank)
    x = torch.randn(n, H, generator=g) * (0.3 + torch.rand(H, generator=g))
    x[:, [7, 100, 201]] *= 30
    return x


def _worker(rank: int, world: int) -> dict:
    from llm.parallel import comm
    from llm.parallel.quant_comm import Calibration, QuantAllReduce, QuantCommConfig, RangeRecorder

    rec = RangeRecorder()
    for i, site in enumerate(SITES):
        rec(site, partial(rank, 100 + i))
    cal = Calibration(rec.gather(), tp=world)
    out: dict = {}

    def forward(q, tag):
        """A residual stream that adds up one reduction per site, as a pre-norm transformer does."""
        comm.set_quantizer(q)
        resid, exact, sums = torch.zeros(40, H), torch.zeros(40, H), []
        for i, site in enumerate(SITES):
            x = partial(rank, i)
            ex = x.clone()
            torch.distributed.all_reduce(ex)
            y = comm.all_reduce(x.clone(), site)
            sums.append(y)
            resid += y
            exact += ex
        out[tag] = ((resid - exact).norm() / exact.norm()).item()
        out[tag + "_sums"] = sums
        return sums

    def cfg(**kw):  # every site quantized unless a test says otherwise: error feedback alone
        return QuantCommConfig(min_bytes=0, **{"exact_last": False, **kw})

    ef = QuantAllReduce(cfg(), cal)
    forward(ef, "ef")
    forward(ef, "ef_again")  # a second forward pass starts afresh: same results
    forward(QuantAllReduce(cfg(error_feedback=False), cal), "noef")
    forward(QuantAllReduce(cfg(chunks=3, chunk_min_bytes=0), cal), "ef_chunks")
    forward(QuantAllReduce(cfg(mode="two_shot"), cal), "ef_two_shot")
    forward(QuantAllReduce(cfg(mode="two_shot", error_feedback=False), cal), "noef_two_shot")
    exact = QuantAllReduce(QuantCommConfig(min_bytes=0), cal)  # the default: exact last site
    out["exact_bits"] = (exact.forward_bits_per_value(H), exact.bits_per_value(H), ef.forward_bits_per_value(H))
    forward(exact, "exact_last")
    forward(exact, "exact_last_again")
    forward(QuantAllReduce(QuantCommConfig(min_bytes=0, mode="two_shot"), cal), "exact_last_two_shot")
    from llm.parallel.quality import _FakeQuant

    forward(_FakeQuant("fake4", cal), "fake4")  # the what-if quantizer of llm.parallel.quality
    forward(_FakeQuant("fake4;" + SITES[-1] + "=12", cal), "fake4_last12")
    comm.set_quantizer(None)
    return out


@pytest.fixture(scope="module")
def res():
    """Both ranks' results of every mode: the gloo ranks are spawned once for all tests of this file."""
    return run_ranks(_worker, 2)


def test_error_feedback_and_pipeline(res):
    r0 = res[0]
    # 8 reductions: without feedback their errors add up in the residual; with it, one remains
    assert r0["ef"] * 2 < r0["noef"], (r0["ef"], r0["noef"])
    assert r0["ef_two_shot"] * 1.5 < r0["noef_two_shot"], (r0["ef_two_shot"], r0["noef_two_shot"])
    for a, b in zip(r0["ef_sums"], r0["ef_again_sums"], strict=True):
        assert torch.equal(a, b), "the carried error leaked into the next forward pass"
    # rows are quantized independently, so chunking changes nothing but the schedule
    for a, b in zip(r0["ef_sums"], r0["ef_chunks_sums"], strict=True):
        assert torch.equal(a, b)
    # every rank sums the same messages: bit-identical results
    for tag in ("ef", "ef_chunks", "ef_two_shot", "noef"):
        for a, b in zip(r0[tag + "_sums"], res[1][tag + "_sums"], strict=True):
            assert torch.equal(a, b), tag


def test_exact_last_site(res):
    """The last site takes the carried error out and sums exactly: the residual stream after a forward
    pass equals the exact one up to fp32 rounding, where a quantized last site leaves its error there."""
    r0 = res[0]
    assert r0["exact_last"] < 1e-5 and r0["exact_last_two_shot"] < 1e-5, r0
    assert r0["ef"] > 1e-3, r0["ef"]
    # the sites before the last are the error-feedback sums of the all-quantized pass, bit for bit
    for a, b in zip(r0["ef_sums"][:-1], r0["exact_last_sums"][:-1], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(r0["exact_last_sums"], r0["exact_last_again_sums"], strict=True):
        assert torch.equal(a, b), "the carried error leaked into the next forward pass"
    for a, b in zip(r0["exact_last_sums"], res[1]["exact_last_sums"], strict=True):
        assert torch.equal(a, b), "ranks disagree"
    fwd, msg, all_quant = r0["exact_bits"]
    assert fwd == pytest.approx((7 * msg + 16) / 8) and all_quant == msg


def test_last_site_order():
    from llm.parallel.quant_comm import last_site

    assert last_site(["layers.9.mlp", "layers.10.attn", "layers.2.mlp"]) == "layers.10.attn"
    assert last_site(["layers.3.mlp", "layers.3.attn"]) == "layers.3.mlp"
    assert last_site(["layers.0.attn", "bench"]) is None  # unknown names: every site quantized
    assert last_site([]) is None


def test_fake_quantizer_matches_the_real_path(res):
    """quality.py's per-site what-if quantizer at 4 bits is the real all-quantized path; more bits at the
    last site leave less error in the residual stream."""
    r0 = res[0]
    for a, b in zip(r0["ef_sums"], r0["fake4_sums"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert r0["fake4_last12"] * 20 < r0["fake4"], (r0["fake4_last12"], r0["fake4"])
