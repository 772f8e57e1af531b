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

    ef = QuantAllReduce(QuantCommConfig(min_bytes=0), cal)
    forward(ef, "ef")
    forward(ef, "ef_again")  # a second forward pass starts afresh: same results
    forward(QuantAllReduce(QuantCommConfig(min_bytes=0, error_feedback=False), cal), "noef")
    forward(QuantAllReduce(QuantCommConfig(min_bytes=0, chunks=3, chunk_min_bytes=0), cal), "ef_chunks")
    forward(QuantAllReduce(QuantCommConfig(min_bytes=0, mode="two_shot"), cal), "ef_two_shot")
    forward(QuantAllReduce(QuantCommConfig(min_bytes=0, mode="two_shot", error_feedback=False), cal),
            "noef_two_shot")
    comm.set_quantizer(None)
    return out


def test_error_feedback_and_pipeline():
    res = run_ranks(_worker, 2)
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
