"""Dequantize + sum the low-bit messages of all ranks (the receive side of the quantized all-reduce).

Input: W messages laid out back to back (what `all_gather_into_tensor` returns), each in the wire
format of `llm.kernels.quantize_pack`. Output: out[N, H] = sum over ranks of the dequantized
partials, accumulated in fp32 in rank order 0..W-1 so that every rank computes bit-identical
results (ranks must agree: they carry replicated activations).
"""

from __future__ import annotations

import torch

from llm.kernels.quantize_pack import Layout, pairable, views

try:
    import triton
    import triton.language as tl

    from llm.kernels.quantize_pack import store_pairs
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
    def _dequant_sum_kernel(buf_ptr, scales_ptr, outl_ptr, idx_ptr, out_ptr, out32_ptr, W, RANK_BYTES,
                            H, PB, NG, K, OFF_S2, OFF_O2, stride_out, stride_oe,
                            GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr,
                            PAIRED: tl.constexpr, HAS_OUTL: tl.constexpr):
        # scales_ptr / outl_ptr: fp16 / bf16 views of the same buffer, OFF_*2 in 2-byte units. Channels
        # are held as [BLOCK_G, GROUP/2] pairs (2j, 2j+1): a byte's two nibbles stay in one lane.
        # stride_out is in 32-bit words if PAIRED (see quantize_pack.load_pairs), stride_oe in elements.
        row = tl.program_id(0).to(tl.int64)
        half: tl.constexpr = GROUP // 2
        g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
        j = g[:, None] * half + tl.arange(0, half)[None, :]
        mg = g < NG
        m0 = (2 * j < H) & mg[:, None]
        m1 = (2 * j + 1 < H) & mg[:, None]
        acc0 = tl.zeros([BLOCK_G, half], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK_G, half], dtype=tl.float32)
        rank_half = RANK_BYTES // 2
        for r in range(0, W):
            b = tl.load(buf_ptr + r * RANK_BYTES + row * PB + j, mask=m0, other=136).to(tl.int32)
            sc = tl.load(scales_ptr + r * rank_half + OFF_S2 + row * NG + g, mask=mg, other=0.0)
            scf = sc.to(tl.float32)[:, None]
            acc0 += ((b & 15) - 8).to(tl.float32) * scf
            acc1 += ((b >> 4) - 8).to(tl.float32) * scf
        # outlier channels carry code 8 (= 0.0) here and are overwritten below
        store_pairs(out_ptr, out32_ptr, row * stride_out, j, acc0, acc1, m0, m1, PAIRED)
        if HAS_OUTL:
            # the outlier channels of this program's range: sum the K bf16 slots over ranks, one short
            # vector per BLOCK_K slots, after every lane's store above (same addresses: barrier first)
            tl.debug_barrier()
            c_lo = tl.program_id(1) * BLOCK_G * GROUP
            kk = tl.arange(0, BLOCK_K)
            for k0 in range(0, K, BLOCK_K):
                mk = (k0 + kk) < K
                idx = tl.load(idx_ptr + k0 + kk, mask=mk, other=-1)
                mo = mk & (idx >= c_lo) & (idx < c_lo + BLOCK_G * GROUP)
                a = tl.zeros([BLOCK_K], dtype=tl.float32)
                for r in range(0, W):
                    a += tl.load(outl_ptr + r * rank_half + OFF_O2 + row * K + k0 + kk, mask=mo,
                                 other=0.0).to(tl.float32)
                tl.store(out_ptr + row * stride_oe + idx, a.to(out_ptr.dtype.element_ty), mask=mo)


def dequant_sum(bufs: torch.Tensor, lay: Layout, outlier_idx: torch.Tensor, slots: torch.Tensor | None = None,
                out_dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None,
                block_g: int = 4, num_warps: int = 2) -> torch.Tensor:
    """Triton launcher, one kernel for groups and outlier channels: same result as `dequant_sum_ref`.

    bufs is [W, lay.total] uint8, contiguous; outlier_idx int32, sorted; slots is unused (the quantize
    side's signature).
    """
    if triton is None:
        raise RuntimeError("triton is not installed; use dequant_sum_ref")
    w = bufs.shape[0]
    if out is None:
        out = torch.empty(lay.rows, lay.hidden, dtype=out_dtype, device=bufs.device)
    paired = pairable(out)
    flat = bufs.reshape(-1)
    k = lay.n_outliers
    grid = (lay.rows, triton.cdiv(lay.n_groups, block_g))
    _dequant_sum_kernel[grid](flat, flat.view(torch.float16), flat.view(torch.bfloat16), outlier_idx, out,
                              out.view(torch.int32) if paired else out, w, lay.total, lay.hidden,
                              lay.packed_bytes, lay.n_groups, k, lay.off_scales // 2, lay.off_outliers // 2,
                              out.stride(0) // (2 if paired else 1), out.stride(0), GROUP=lay.group,
                              BLOCK_G=block_g, BLOCK_K=max(16, min(128, triton.next_power_of_2(max(k, 1)))),
                              PAIRED=paired, HAS_OUTL=k > 0, num_warps=num_warps)
    return out
