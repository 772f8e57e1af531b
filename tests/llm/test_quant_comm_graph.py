"""The quantized all-reduce inside a CUDA graph on one GPU: its kernels, and the whole one-shot path
over a one-rank NCCL group. Replays must equal eager calls bit for bit (the graph holds no host state
that could go stale: no syncs, no allocations, launches with fixed arguments)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def _need_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pytest.importorskip("triton", reason="the Triton kernels are the CUDA path")


def _capture(fn) -> torch.cuda.CUDAGraph:
    """Warm fn on a side stream (compiles, allocates the cached buffers), then capture one call."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def test_kernels_replay_equals_eager():
    """quantize (error feedback) + dequant+sum of 2 messages into the input: eager == graph replays,
    and the eager calls (the later ones take the cached direct launch) match the torch references."""
    _need_cuda()
    from llm.kernels import dequant_sum as ds
    from llm.kernels import quantize_pack as qp

    dev = torch.device("cuda")
    n, h, group = 96, 4096, 128
    k = h // 64
    g = torch.Generator(device=dev).manual_seed(0)
    idx = torch.randperm(h, device=dev, generator=g)[:k].sort().values.to(torch.int32)
    keep = qp.keep_map(idx, h)
    lay = qp.layout(n, h, group, k)
    xs = [torch.randn(n, h, device=dev, dtype=torch.bfloat16, generator=g) * 3 for _ in range(3)]
    other = qp.quantize_pack_ref(torch.randn(n, h, device=dev, dtype=torch.bfloat16, generator=g), idx.long(),
                                 group)
    src, x, err = torch.empty_like(xs[0]), torch.empty_like(xs[0]), torch.zeros_like(xs[0])
    bufs = torch.empty(2, lay.total, dtype=torch.uint8, device=dev)

    def step():
        x.copy_(src)
        qp.quantize_pack(x, idx, keep, group, out=bufs[0], err=err)
        bufs[1].copy_(other)
        ds.dequant_sum(bufs, lay, idx, out=x)

    eager = []
    e_ref = torch.zeros_like(err)
    for xi in xs:
        src.copy_(xi)
        step()
        eager.append((x.clone(), err.clone()))
        ref = qp.quantize_pack_ref(xi, idx.long(), group, err=e_ref)
        torch.testing.assert_close(bufs[0], ref, rtol=0, atol=0)
        want = ds.dequant_sum_ref(torch.stack([ref, other]), lay, idx.long(), torch.bfloat16)
        torch.testing.assert_close(x.float(), want.float(), rtol=2 ** -7, atol=1e-3)
    graph = _capture(step)
    err.zero_()
    for xi, (want_x, want_e) in zip(xs, eager, strict=True):
        src.copy_(xi)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(x, want_x, rtol=0, atol=0)
        torch.testing.assert_close(err, want_e, rtol=0, atol=0)


def test_quant_all_reduce_one_rank_replay_equals_eager(tmp_path):
    """A 4-site forward pass of QuantAllReduce (error feedback across sites, NCCL all-gather of one rank,
    the last site an exact NCCL all-reduce) captured once: a replay gives the eager results, which are
    close to the inputs."""
    _need_cuda()
    import torch.distributed as dist

    from llm.parallel.quant_comm import Calibration, QuantAllReduce, QuantCommConfig

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    if not dist.is_nccl_available():
        pytest.skip("torch without NCCL")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1,
                            device_id=torch.device("cuda", 0))
    try:
        n, h = 64, 4096
        gen = torch.Generator().manual_seed(1)
        sites = [f"layers.{i // 2}.{'mlp' if i % 2 else 'attn'}" for i in range(4)]
        cal = Calibration({s: torch.rand(1, h, generator=gen) for s in sites}, tp=1)
        q = QuantAllReduce(QuantCommConfig(min_bytes=0), cal)
        inputs = [torch.randn(n, h, generator=gen).to("cuda", torch.bfloat16) for _ in sites]
        static = [torch.empty_like(t) for t in inputs]

        def forward():
            return [q(t, s) for t, s in zip(static, sites, strict=True)]

        for t, v in zip(static, inputs, strict=True):
            t.copy_(v)
        eager = [o.clone() for o in forward()]
        for o, v in zip(eager, inputs, strict=True):  # one rank: the sum is the rank's own dequantized message
            rel = ((o.float() - v.float()).norm() / v.float().norm()).item()
            assert rel < 0.2, rel
        graph = _capture(forward)
        for t, v in zip(static, inputs, strict=True):
            t.copy_(v)
        graph.replay()
        torch.cuda.synchronize()
        for got, want in zip(static, eager, strict=True):  # the sums are written in place
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    finally:
        dist.destroy_process_group()
