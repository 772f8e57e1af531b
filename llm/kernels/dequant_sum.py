"""Dequantize + sum the low-bit messages of all ranks (the receive side of the quantized all-reduce).

Input: W messages laid out back to back (what `all_gather_into_tensor` returns), each in the wire
format of `llm.kernels.quantize_pack`. Output: out[N, H] = sum over ranks of the dequantized
partials, accumulated in fp32 in rank order 0..W-1 so that every rank computes bit-identical
results (ranks must agree: they carry replicated activations).
"""

from __future__ import annotations

import torch

from llm.kernels.quantize_pack import Layout, views

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch reference is the only path
    triton = None
    tl = None


def dequant_sum_ref(bufs: torch.Tensor, lay: Layout, outlier_idx: torch.Tensor,
                    out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Torch reference: bufs [W, lay.total] uint8 -> [N, H] sum of the W dequantized messages.

    Bytes moved: reads W*N*(ceil(H/2) + 2*ceil(H/G) + 2*K), writes N*H*out.element_size():
    for W=2, bf16 output, G=128, K=H/64 that is ~1.1 bytes in and 2 bytes out per value.
    """
    n, h, g = lay.rows, lay.hidden, lay.group
    acc = torch.zeros(n, lay.n_groups * g, dtype=torch.float32, device=bufs.device)
    acc_o = torch.zeros(n, lay.n_outliers, dtype=torch.float32, device=bufs.device)
    for r in range(bufs.shape[0]):
        packed, scales, outl = views(bufs[r], lay)
        p = packed.to(torch.int32)
        q = torch.stack([p & 15, p >> 4], dim=-1).view(n, -1) - 8     # [N, 2*PB]
        q = torch.nn.functional.pad(q, (0, lay.n_groups * g - q.shape[1]))
        v = q.view(n, lay.n_groups, g).float() * scales.float().unsqueeze(-1)
        acc += v.view(n, -1)
        acc_o += outl.float()
    res = acc[:, :h]
    res[:, outlier_idx] = acc_o
    return res.to(out_dtype)


if triton is not None:

    @triton.jit
    def _dequant_sum_kernel(buf_ptr, scales_ptr, out_ptr, W, RANK_BYTES, H, PB, NG, OFF_S, stride_out,
                            GROUP: tl.constexpr, BLOCK_G: tl.constexpr):
        row = tl.program_id(0)
        pid_g = tl.program_id(1)
        half: tl.constexpr = GROUP // 2
        g = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
        byte = g[:, None] * half + tl.arange(0, half)[None, :]         # [BLOCK_G, half]
        mb = (byte < PB) & (g[:, None] < NG)
        mg = g < NG
        acc_lo = tl.zeros([BLOCK_G, half], dtype=tl.float32)
        acc_hi = tl.zeros([BLOCK_G, half], dtype=tl.float32)
        # scales_ptr is an fp16 view of the same buffer: offsets in 2-byte units
        rank_half = RANK_BYTES // 2
        for r in range(0, W):
            b = tl.load(buf_ptr + r * RANK_BYTES + row * PB + byte, mask=mb, other=136).to(tl.int32)
            sc = tl.load(scales_ptr + r * rank_half + OFF_S // 2 + row * NG + g, mask=mg, other=0.0)
            scf = sc.to(tl.float32)[:, None]
            acc_lo += ((b & 15) - 8).to(tl.float32) * scf
            acc_hi += ((b >> 4) - 8).to(tl.float32) * scf
        acc = tl.reshape(tl.join(acc_lo, acc_hi), [BLOCK_G, GROUP])    # interleave back to channels
        ch = g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
        # outlier channels hold code 8 (= 0.0) here; _outlier_sum_kernel overwrites them afterwards
        # (stream order), which keeps this store free of data-dependent masks (vectorized)
        tl.store(out_ptr + row * stride_out + ch, acc.to(out_ptr.dtype.element_ty),
                 mask=(ch < H) & (g[:, None] < NG))

    @triton.jit
    def _outlier_sum_kernel(outl_ptr, idx_ptr, out_ptr, W, RANK_BYTES, N, K, OFF_O, stride_out,
                            BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        kk = tl.arange(0, BLOCK_K)
        rank_half = RANK_BYTES // 2
        for k0 in range(0, K, BLOCK_K):
            mk = (k0 + kk) < K
            m = (rows[:, None] < N) & mk[None, :]
            s = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
            for r in range(0, W):
                v = tl.load(outl_ptr + r * rank_half + OFF_O // 2 + rows[:, None] * K + k0 + kk[None, :],
                            mask=m, other=0.0)
                s += v.to(tl.float32)
            idx = tl.load(idx_ptr + k0 + kk, mask=mk, other=0)
            tl.store(out_ptr + rows[:, None] * stride_out + idx[None, :], s.to(out_ptr.dtype.element_ty), mask=m)


def dequant_sum(bufs: torch.Tensor, lay: Layout, outlier_idx: torch.Tensor, outlier_mask: torch.Tensor | None = None,
                out_dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None,
                block_g: int = 4) -> torch.Tensor:
    """Triton launchers (groups, then outlier channels): same result as `dequant_sum_ref`.

    bufs is [W, lay.total] uint8, contiguous; outlier_mask is unused (kept for a uniform signature).
    """
    if triton is None:
        raise RuntimeError("triton is not installed; use dequant_sum_ref")
    w = bufs.shape[0]
    if out is None:
        out = torch.empty(lay.rows, lay.hidden, dtype=out_dtype, device=bufs.device)
    flat = bufs.reshape(-1)
    grid = (lay.rows, triton.cdiv(lay.n_groups, block_g))
    _dequant_sum_kernel[grid](flat, flat.view(torch.float16), out, w, lay.total, lay.hidden,
                              lay.packed_bytes, lay.n_groups, lay.off_scales, out.stride(0),
                              GROUP=lay.group, BLOCK_G=block_g)
    k = lay.n_outliers
    if k:
        block_k = max(16, min(128, triton.next_power_of_2(k)))
        block_r = 16
        _outlier_sum_kernel[(triton.cdiv(lay.rows, block_r),)](
            flat.view(torch.bfloat16), outlier_idx, out, w, lay.total, lay.rows, k, lay.off_outliers,
            out.stride(0), BLOCK_R=block_r, BLOCK_K=block_k)
    return out
