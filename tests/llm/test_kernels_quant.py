"""Triton quantize+pack and dequant+sum kernels vs their torch references, on irregular shapes.

On CPU the kernels run under TRITON_INTERPRET=1 (small grids); the `gpu` test runs them on CUDA.
Both paths are covered: bf16 moved as 32-bit pairs of channels (even H) and per-channel loads (fp32,
odd H), with and without error feedback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed (the comm path uses the torch refs)")

# (rows, hidden, group, outliers): odd channel counts, partial groups, K = 0, a real row width
SHAPES = [(37, 781, 64, 12), (5, 256, 128, 4), (3, 130, 16, 0), (1, 4096, 128, 64)]


def _case(n, h, k, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    # per-channel magnitudes spanning 100x, a few channels far larger: what TP partials look like
    x = torch.randn(n, h, generator=g) * (torch.rand(h, generator=g) * 3 + 0.03)
    idx = torch.randperm(h, generator=g)[:k].sort().values
    x[:, idx] *= 40
    return x.to(dtype).to(device), idx.to(torch.int32).to(device)


def _check(qp, ds, n, h, group, k, dtype, device, seed, world=3, block_g=2, block_r=None):
    xs, bufs = [], []
    lay = qp.layout(n, h, group, k)
    for r in range(world):
        # same calibrated outlier channels on every rank, different values
        x, idx = _case(n, h, k, dtype, device, seed)
        keep = qp.keep_map(idx, h)
        if r:
            x = (x.float() * torch.rand(n, 1, device=device) + r).to(dtype)
        xs.append(x)
        ref = qp.quantize_pack_ref(x, idx.long(), group)
        got = qp.quantize_pack(x, idx, keep, group, block_g=block_g, block_r=block_r)
        rp, rs, ro = qp.views(ref, lay)
        gp, gs, go = qp.views(got, lay)
        torch.testing.assert_close(gp, rp, rtol=0, atol=0)
        torch.testing.assert_close(gs, rs, rtol=0, atol=0)
        # fp32 -> bf16 rounding of outliers may differ by one ulp (the interpreter truncates)
        torch.testing.assert_close(go.float(), ro.float(), rtol=2 ** -7, atol=0)
        bufs.append(ref)
    stacked = torch.stack(bufs)
    ref_sum = ds.dequant_sum_ref(stacked, lay, idx.long())
    for out_dtype in (torch.float32, dtype):
        got_sum = ds.dequant_sum(stacked, lay, idx, keep, out_dtype=out_dtype, block_g=block_g, block_r=block_r)
        # fused multiply-adds on the GPU may differ from the reference in the last bits, which can move
        # a bf16 output by one unit in the last place (up to 2^-7 relative)
        tol = 1e-5 if out_dtype == torch.float32 else 2 ** -7
        torch.testing.assert_close(got_sum.float(), ref_sum.to(out_dtype).float(), rtol=tol,
                                   atol=tol * ref_sum.abs().max().item())
    # rows further apart than one message (the p2p workspace's 256-byte row stride)
    padded = torch.zeros(world, lay.total + 48, dtype=torch.uint8, device=device)
    padded[:, : lay.total] = stacked
    got_sum = ds.dequant_sum(padded[:, : lay.total], lay, idx, keep, out_dtype=torch.float32, block_g=block_g,
                             block_r=block_r)
    torch.testing.assert_close(got_sum, ref_sum, rtol=1e-5, atol=1e-5 * ref_sum.abs().max().item())
    exact = sum(x.float() for x in xs)
    # error bound per rank: the clipped top 1/8 of a group's range (> half a step of absmax / 8), and
    # bf16 rounding on outliers
    err = (ref_sum - exact).abs().amax()
    bound = sum(x.float().abs().amax() for x in xs) / 8 + 1e-3
    assert err <= bound


def _check_error_feedback(qp, n, h, group, k, dtype, device, seed, block_g=2, block_r=None):
    """Two chained quantizations with an error buffer: the reference's codes, a self-consistent error."""
    x, idx = _case(n, h, k, dtype, device, seed)
    x2, _ = _case(n, h, k, dtype, device, seed + 1)
    keep = qp.keep_map(idx, h)
    lay = qp.layout(n, h, group, k)
    e_ref, e_got = torch.empty_like(x), torch.empty_like(x)
    for step, xx in enumerate((x, x2)):
        e_in = e_ref.clone() if step else None
        ref = qp.quantize_pack_ref(xx, idx.long(), group, err=e_ref, err_in=step > 0)
        if step:  # both quantize the same x - err
            e_got.copy_(e_in)
        got = qp.quantize_pack(xx, idx, keep, group, block_g=block_g, block_r=block_r, err=e_got, err_in=step > 0)
        (gp, gs, go), (rp, rs, ro) = qp.views(got, lay), qp.views(ref, lay)
        torch.testing.assert_close(gp, rp, rtol=0, atol=0)
        torch.testing.assert_close(gs, rs, rtol=0, atol=0)
        torch.testing.assert_close(go.float(), ro.float(), rtol=2 ** -7, atol=0)
        # the new error is what this message got wrong: dequant(message) - (x - err_in), in x's dtype
        target = xx.float() - (e_in.float() if e_in is not None else 0)
        for e, buf in ((e_ref, ref), (e_got, got)):
            want = _dequant_one(qp, buf, lay, idx) - target
            torch.testing.assert_close(e.float(), want, rtol=2 ** -7, atol=1e-5 * target.abs().max().item())


def _check_peers(qp, n, h, group, k, dtype, device, seed, n_peers=1):
    """The pushing quantize (peers): the same message in `out` and, byte for byte, in every peer copy."""
    x, idx = _case(n, h, k, dtype, device, seed)
    keep = qp.keep_map(idx, h)
    lay = qp.layout(n, h, group, k)
    ref = torch.zeros(lay.total, dtype=torch.uint8, device=device)  # the padding too: zeros everywhere
    qp.quantize_pack(x, idx, keep, group, out=ref, err=torch.zeros_like(x), err_in=True)
    out = torch.zeros(lay.total, dtype=torch.uint8, device=device)
    # separate allocations at other 16-byte alignments within their pages, as other ranks' buffers are
    backing = [torch.zeros(lay.total + 64, dtype=torch.uint8, device=device) for _ in range(n_peers)]
    copies = [b[16 * (i + 1): 16 * (i + 1) + lay.total] for i, b in enumerate(backing)]
    peers = torch.tensor([c.data_ptr() - out.data_ptr() for c in copies], dtype=torch.int64, device=device)
    err = torch.zeros_like(x)
    qp.quantize_pack(x, idx, keep, group, out=out, err=err, err_in=True, peers=peers)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for i, (c, b) in enumerate(zip(copies, backing, strict=True)):
        torch.testing.assert_close(c, out, rtol=0, atol=0)
        assert not b[: 16 * (i + 1)].any() and not b[16 * (i + 1) + lay.total:].any()  # nothing outside the slot


def _dequant_one(qp, buf, lay, idx):
    from llm.kernels.dequant_sum import dequant_sum_ref

    return dequant_sum_ref(buf[None], lay, idx.long())


def _interpreted_cases() -> None:
    """Entry point of the interpreter subprocess (TRITON_INTERPRET is read when @triton.jit runs)."""
    import llm.kernels.dequant_sum as ds
    import llm.kernels.quantize_pack as qp

    assert os.environ.get("TRITON_INTERPRET") == "1"
    for n, h, group, k in SHAPES[:3]:
        for dtype in (torch.float32, torch.bfloat16):
            _check(qp, ds, n, h, group, k, dtype, "cpu", seed=n * h)
            _check_error_feedback(qp, n, h, group, k, dtype, "cpu", seed=n + h)
    # the default tiles (whole rows, several rows per program), rows not a multiple of the tile
    _check(qp, ds, 11, 512, 128, 8, torch.bfloat16, "cpu", seed=7, block_g=None)
    _check_error_feedback(qp, 11, 512, 128, 8, torch.bfloat16, "cpu", seed=8, block_g=None)
    _check_peers(qp, 11, 512, 128, 8, torch.bfloat16, "cpu", seed=9)
    _check_peers(qp, 5, 130, 16, 0, torch.float32, "cpu", seed=10)
    print("interpreted kernels ok")


def test_kernels_match_reference_interpreted():
    """Both kernels under TRITON_INTERPRET=1 (a fresh process: the mode is fixed at import)."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{root}:{root / 'protos'}"}
    code = "from tests.llm.test_kernels_quant import _interpreted_cases; _interpreted_cases()"
    p = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "interpreted kernels ok" in p.stdout


def test_layout_bits_per_value_and_keep_map():
    from llm.kernels.quantize_pack import keep_map, layout

    lay = layout(8, 4096, 128, 64)
    # 4 bits per code + 16 bits per 128 (scales) + 16 bits x 64/4096 (bf16 outliers)
    assert lay.bits_per_value == pytest.approx(4 + 16 / 128 + 16 * 64 / 4096)
    assert lay.off_scales % 16 == 0 and lay.off_outliers % 16 == 0 and lay.total % 16 == 0
    m = keep_map(torch.tensor([3, 9, 10], dtype=torch.int32), 12)
    # pairs (0,1) (2,3) (4,5) (6,7) (8,9) (10,11): 0xFFFF over each inlier half, 0 over an outlier
    assert m.tolist() == [-1, 0xFFFF, -1, -1, 0xFFFF, -65536]
    assert keep_map(torch.tensor([0], dtype=torch.int32), 3).tolist() == [-65536, -1]  # odd H: padded pair


def test_error_feedback_reference_cancels_accumulated_error():
    """Summing many quantized messages with error feedback leaves one message's error, not their sum."""
    from llm.kernels.dequant_sum import dequant_sum_ref
    from llm.kernels.quantize_pack import layout, quantize_pack_ref

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(16, 256, generator=g) for _ in range(12)]
    idx = torch.tensor([3, 100], dtype=torch.long)
    lay = layout(16, 256, 128, 2)
    err = torch.empty(16, 256)
    tot_ef, tot_plain = torch.zeros(16, 256), torch.zeros(16, 256)
    for i, x in enumerate(xs):
        tot_ef += dequant_sum_ref(quantize_pack_ref(x, idx, 128, err=err, err_in=i > 0)[None], lay, idx)
        tot_plain += dequant_sum_ref(quantize_pack_ref(x, idx, 128)[None], lay, idx)
    exact = sum(xs)
    e_ef, e_plain = (tot_ef - exact).norm(), (tot_plain - exact).norm()
    # the accumulated error telescopes to the last message's error alone
    torch.testing.assert_close(tot_ef - exact, err, rtol=0, atol=1e-5)
    assert e_ef * 2.5 < e_plain, (e_ef, e_plain)


@pytest.mark.gpu
@pytest.mark.parametrize("n,h,group,k", SHAPES + [(1823, 782, 64, 12), (2048, 4096, 128, 64)])
def test_kernels_match_reference_cuda(n, h, group, k):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import llm.kernels.dequant_sum as ds
    import llm.kernels.quantize_pack as qp

    for dtype in (torch.float32, torch.bfloat16):
        # the default tile (whole rows of up to 32 groups), one group, a few groups of several rows
        for block_r, block_g in ((None, None), (1, 1), (4, 8)):
            _check(qp, ds, n, h, group, k, dtype, "cuda", seed=n + h, block_g=block_g, block_r=block_r)
        for block_g in (None, 4):
            _check_error_feedback(qp, n, h, group, k, dtype, "cuda", seed=n * h, block_g=block_g)
        _check_peers(qp, n, h, group, k, dtype, "cuda", seed=n + 2 * h)
