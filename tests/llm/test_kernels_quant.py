"""Triton quantize+pack and dequant+sum kernels vs their torch references, on irregular shapes.

On CPU the kernels run under TRITON_INTERPRET=1 (small grids); the `gpu` test runs them on CUDA.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed (the comm path uses the torch refs)")

SHAPES = [(37, 781, 64, 12), (5, 256, 128, 4), (3, 130, 16, 0), (1, 4096, 128, 64)]


def _case(n, h, k, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    # per-channel magnitudes spanning 100x, a few channels far larger: what TP partials look like
    x = torch.randn(n, h, generator=g) * (torch.rand(h, generator=g) * 3 + 0.03)
    idx = torch.randperm(h, generator=g)[:k].sort().values
    x[:, idx] *= 40
    mask = torch.zeros(h, dtype=torch.int8)
    mask[idx] = 1
    return x.to(dtype).to(device), idx.to(torch.int32).to(device), mask.to(device)


def _check(qp, ds, n, h, group, k, dtype, device, seed, world=3):
    xs, bufs = [], []
    for r in range(world):
        # same calibrated outlier channels on every rank, different values
        x, idx, mask = _case(n, h, k, dtype, device, seed)
        if r:
            x = (x.float() * torch.rand(n, 1, device=device) + r).to(dtype)
        xs.append(x)
        ref = qp.quantize_pack_ref(x, idx.long(), group)
        got = qp.quantize_pack(x, idx, mask, group)
        lay = qp.layout(n, h, group, k)
        rp, rs, ro = qp.views(ref, lay)
        gp, gs, go = qp.views(got, lay)
        torch.testing.assert_close(gp, rp, rtol=0, atol=0)
        torch.testing.assert_close(gs, rs, rtol=0, atol=0)
        # fp32 -> bf16 rounding of outliers may differ by one ulp between Triton and torch
        torch.testing.assert_close(go.float(), ro.float(), rtol=2 ** -7, atol=0)
        bufs.append(ref)
    stacked = torch.stack(bufs)
    ref_sum = ds.dequant_sum_ref(stacked, lay, idx.long())
    got_sum = ds.dequant_sum(stacked, lay, idx, mask)
    # fused multiply-adds on the GPU may differ from the reference in the last bits
    torch.testing.assert_close(got_sum, ref_sum, rtol=1e-5, atol=1e-5 * ref_sum.abs().max().item())
    exact = sum(x.float() for x in xs)
    # error bound per rank: the clipped top 1/8 of a group's range (> half a step of absmax / 8), and
    # bf16 rounding on outliers
    err = (ref_sum - exact).abs().amax()
    bound = sum(x.float().abs().amax() for x in xs) / 8 + 1e-3
    assert err <= bound


def _interpreted_cases() -> None:
    """Entry point of the interpreter subprocess (TRITON_INTERPRET is read when @triton.jit runs)."""
    import llm.kernels.dequant_sum as ds
    import llm.kernels.quantize_pack as qp

    assert os.environ.get("TRITON_INTERPRET") == "1"
    for n, h, group, k in SHAPES[:3]:
        for dtype in (torch.float32, torch.bfloat16):
            _check(qp, ds, n, h, group, k, dtype, "cpu", seed=n * h)
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


def test_layout_bits_per_value():
    from llm.kernels.quantize_pack import layout

    lay = layout(8, 4096, 128, 64)
    # 4 bits per code + 16 bits per 128 (scales) + 16 bits x 64/4096 (bf16 outliers)
    assert lay.bits_per_value == pytest.approx(4 + 16 / 128 + 16 * 64 / 4096)
    assert lay.off_scales % 16 == 0 and lay.off_outliers % 16 == 0 and lay.total % 16 == 0


@pytest.mark.gpu
@pytest.mark.parametrize("n,h,group,k", SHAPES + [(1823, 782, 64, 12), (2048, 4096, 128, 64)])
def test_kernels_match_reference_cuda(n, h, group, k):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import llm.kernels.dequant_sum as ds
    import llm.kernels.quantize_pack as qp

    for dtype in (torch.float32, torch.bfloat16):
        _check(qp, ds, n, h, group, k, dtype, "cuda", seed=n + h)
