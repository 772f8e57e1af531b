"""Quantize + pack one rank's partial sums for the low-bit all-reduce (arXiv 2411.07942 style).

Wire format of one message of N rows x H channels (one flat uint8 buffer, see `layout()`):

- packed:   [N, ceil(H/2)] uint8, two signed 4-bit codes per byte (low nibble = even channel),
            symmetric per group of G consecutive channels, code = round(x / scale) in [-7, 7] + 8;
- scales:   [N, ceil(H/G)] fp16, scale = absmax(group) / 8 (outlier channels excluded), so the top
            1/8 of a group's range is clipped to +-7 steps: for Gaussian-like groups of 128 this lowers
            the error by ~7% against absmax / 7 (measured on the default model's partials);
- outliers: [N, K] bf16, the values of the K calibrated outlier channels, sent exactly in bf16.

Outlier channels are zeroed before the group absmax, so their 4-bit code is 0 and they cost
4 bits of padding each (K = H/64 gives 1/16 bit per value): the price of keeping every load and
store contiguous instead of gathering inliers through a permutation. The outlier indices are
fixed by calibration and never travel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch reference is the only path
    triton = None
    tl = None

QMAX = 7
# scale = absmax * (1/8), written as a multiplication in the reference and the kernel alike (torch on
# CUDA turns a division by a scalar into one; with a power of two both are exact anyway)
INV_QMAX = 0.125  # scale = absmax / 8: a power of two, so exact in every implementation
_ALIGN = 16


@dataclass(frozen=True)
class Layout:
    """Byte offsets of the three regions of one rank's message."""

    rows: int
    hidden: int
    group: int
    n_outliers: int
    packed_bytes: int   # per row
    n_groups: int       # per row
    off_scales: int     # bytes, 16-aligned
    off_outliers: int   # bytes, 16-aligned
    total: int          # bytes, 16-aligned

    @property
    def bits_per_value(self) -> float:
        """True average bits per communicated value: codes + scales + bf16 outliers (no padding)."""
        bits = 8 * self.packed_bytes + 16 * self.n_groups + 16 * self.n_outliers
        return bits / self.hidden


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


@functools.lru_cache(maxsize=4096)
def layout(rows: int, hidden: int, group: int, n_outliers: int) -> Layout:
    """The wire layout of an [rows, hidden] message with `n_outliers` bf16 channels."""
    if group % 2 or group <= 0:
        raise ValueError(f"group size must be a positive even number, got {group}")
    pb = (hidden + 1) // 2
    ng = (hidden + group - 1) // group
    off_s = _align(rows * pb)
    off_o = _align(off_s + 2 * rows * ng)
    total = _align(off_o + 2 * rows * n_outliers)
    return Layout(rows, hidden, group, n_outliers, pb, ng, off_s, off_o, total)


def views(buf: torch.Tensor, lay: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed uint8 [N, PB], scales fp16 [N, NG], outliers bf16 [N, K]) views into a flat buffer."""
    packed = buf[: lay.rows * lay.packed_bytes].view(lay.rows, lay.packed_bytes)
    scales = buf[lay.off_scales: lay.off_scales + 2 * lay.rows * lay.n_groups].view(torch.float16)
    outl = buf[lay.off_outliers: lay.off_outliers + 2 * lay.rows * lay.n_outliers].view(torch.bfloat16)
    return packed, scales.view(lay.rows, lay.n_groups), outl.view(lay.rows, lay.n_outliers)


def quantize_pack_ref(x: torch.Tensor, outlier_idx: torch.Tensor, group: int,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Torch reference: quantize x [N, H] into a flat uint8 message (see module docstring).

    Bytes moved: reads N*H*x.element_size() (+ K*8 index bytes), writes N*(ceil(H/2) + 2*ceil(H/G) + 2*K):
    for bf16 input and G=128, K=H/64 that is 2 bytes in, ~0.55 bytes out per value.
    """
    n, h = x.shape
    k = outlier_idx.numel()
    lay = layout(n, h, group, k)
    buf = torch.zeros(lay.total, dtype=torch.uint8, device=x.device) if out is None else out
    packed, scales, outl = views(buf, lay)
    xf = x.float()
    outl.copy_(xf[:, outlier_idx].to(torch.bfloat16))
    xf = xf.clone()
    xf[:, outlier_idx] = 0.0
    pad = lay.n_groups * group - h
    xg = torch.nn.functional.pad(xf, (0, pad)).view(n, lay.n_groups, group)
    absmax = xg.abs().amax(dim=-1)
    sc = (absmax * INV_QMAX).clamp(max=65504.0).to(torch.float16)
    scales.copy_(sc)
    scf = sc.float().unsqueeze(-1)
    q = torch.where(scf > 0, xg / torch.where(scf > 0, scf, 1.0), 0.0)
    q = torch.floor(q + 0.5).clamp(-QMAX, QMAX).to(torch.int32) + 8
    # G is even, so the padded groups always cover 2*PB channels; past H they hold code 8 (= 0.0)
    q = q.view(n, -1)[:, : 2 * lay.packed_bytes]
    packed.copy_((q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8))
    return buf


if triton is not None:

    @triton.jit
    def _quantize_pack_kernel(x_ptr, mask_ptr, idx_ptr, buf_ptr, half_ptr, bhalf_ptr,
                              H, stride_x, PB, NG, K, OFF_S2, OFF_O2, INV_Q,
                              GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr):
        # buf_ptr / half_ptr / bhalf_ptr: the same message as uint8 / fp16 / bf16; OFF_*2 in 2-byte units
        row = tl.program_id(0)
        pid_g = tl.program_id(1)
        half: tl.constexpr = GROUP // 2
        g = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)                    # group ids [BLOCK_G]
        ch = g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]          # channels [BLOCK_G, GROUP]
        m = (ch < H) & (g[:, None] < NG)
        x = tl.load(x_ptr + row * stride_x + ch, mask=m, other=0.0).to(tl.float32)
        is_out = tl.load(mask_ptr + ch, mask=m, other=0)
        x = tl.where(is_out != 0, 0.0, x)
        absmax = tl.max(tl.abs(x), axis=1)
        sc = tl.minimum(absmax * INV_Q, 65504.0).to(tl.float16)
        tl.store(half_ptr + OFF_S2 + row * NG + g, sc, mask=g < NG)
        scf = sc.to(tl.float32)[:, None]
        # IEEE division, not x * (1/s): the compiler contracts x * r + 0.5 into one FMA (one rounding),
        # which moves ~0.01% of codes by a step against torch (run 2); a division cannot be contracted
        q = tl.where(scf > 0, tl.math.div_rn(x, tl.where(scf > 0, scf, 1.0)), 0.0)
        q = tl.minimum(tl.maximum(tl.floor(q + 0.5), -7.0), 7.0).to(tl.int32) + 8
        # even channel -> low nibble, odd channel -> high nibble; contiguous loads and stores
        lo, hi = tl.split(tl.reshape(q, [BLOCK_G, half, 2]))
        byte = g[:, None] * half + tl.arange(0, half)[None, :]
        tl.store(buf_ptr + row * PB + byte, (lo | (hi << 4)).to(tl.uint8),
                 mask=(byte < PB) & (g[:, None] < NG))
        if pid_g == 0:
            kk = tl.arange(0, BLOCK_K)
            for k0 in range(0, K, BLOCK_K):
                mk = (k0 + kk) < K
                idx = tl.load(idx_ptr + k0 + kk, mask=mk, other=0)
                v = tl.load(x_ptr + row * stride_x + idx, mask=mk, other=0.0)
                tl.store(bhalf_ptr + OFF_O2 + row * K + k0 + kk, v.to(tl.bfloat16), mask=mk)


def quantize_pack(x: torch.Tensor, outlier_idx: torch.Tensor, outlier_mask: torch.Tensor, group: int,
                  out: torch.Tensor | None = None, block_g: int = 4) -> torch.Tensor:
    """Triton launcher: same result as `quantize_pack_ref` (x [N, H] row-major; mask int8 [H])."""
    if triton is None:
        raise RuntimeError("triton is not installed; use quantize_pack_ref")
    if group & (group - 1):
        raise ValueError(f"the Triton kernels need a power-of-two group size, got {group}")
    n, h = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    k = outlier_idx.numel()
    lay = layout(n, h, group, k)
    buf = torch.empty(lay.total, dtype=torch.uint8, device=x.device) if out is None else out
    block_k = max(16, min(256, triton.next_power_of_2(max(k, 1))))
    grid = (n, triton.cdiv(lay.n_groups, block_g))
    _quantize_pack_kernel[grid](x, outlier_mask, outlier_idx, buf, buf.view(torch.float16),
                                buf.view(torch.bfloat16), h, x.stride(0), lay.packed_bytes, lay.n_groups, k,
                                lay.off_scales // 2, lay.off_outliers // 2, INV_QMAX,
                                GROUP=group, BLOCK_G=block_g, BLOCK_K=block_k)
    return buf
