"""Dequantize + sum the low-bit messages of all ranks (the receive side of the quantized all-reduce).

Input: W messages laid out back to back (what `all_gather_into_tensor` returns), each in the wire
format of `llm.kernels.quantize_pack`. Output: out[N, H] = sum over ranks of the dequantized
partials, accumulated in fp32 in rank order 0..W-1 so that every rank computes bit-identical
results (ranks must agree: they carry replicated activations).
"""

from __future__ import annotations

import torch

from llm.kernels.launch import Launcher
from llm.kernels.quantize_pack import INTERPRET, Layout, block_k, pairable, tile_shape, views

try:
    import triton
    import triton.language as tl

    from llm.kernels.quantize_pack import byte_offsets, outlier_tile, store_pairs, tile
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


# groups per program and warps when the caller does not choose (bench/tp_kernels.py sweeps them)
TILE_GROUPS = 32
NUM_WARPS = 4

if triton is not None:

    @triton.jit
    def _dequant_sum_kernel(buf_ptr, idx_ptr, out_ptr, RANK_BYTES, N, PB, H2, NG, K, OFF_S, OFF_O, stride_o,
                            stride_ow, W: tl.constexpr, GROUP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
                            BLOCK_K: tl.constexpr, PAIRED: tl.constexpr, EVEN: tl.constexpr,
                            HAS_OUTL: tl.constexpr, INTERP: tl.constexpr):
        # One program: BLOCK_R rows x BLOCK_G groups of every rank's message, accumulated in fp32 and
        # written once. Channels are held as pairs (2j, 2j+1): a byte's two nibbles stay in one lane.
        # stride_o in elements, stride_ow in 32-bit words (PAIRED); OFF_S / OFF_O in bytes.
        r, g, j, ok, m0, m1 = tile(N, PB, H2, NG, GROUP, BLOCK_R, BLOCK_G, EVEN)
        r64 = r.to(tl.int64)
        acc0 = tl.zeros(j.shape, dtype=tl.float32)
        acc1 = tl.zeros(j.shape, dtype=tl.float32)
        base = buf_ptr
        for _ in tl.static_range(W):  # unrolled: every rank's loads in flight at once
            b = tl.load(base + byte_offsets(r64[:, None] * PB + j), mask=m0, other=136).to(tl.int32)
            sc = tl.load((base + OFF_S).to(tl.pointer_type(tl.float16), bitcast=True) + r64 * NG + g, mask=ok,
                         other=0.0)
            scf = sc.to(tl.float32)[:, None]
            # (code - 8) * scale is exact in fp32: fused or not, one rounding per addition, in rank order
            acc0 += ((b & 15) - 8).to(tl.float32) * scf
            acc1 += ((b >> 4) - 8).to(tl.float32) * scf
            base += RANK_BYTES  # a 64-bit pointer: no overflow past 2 GB of messages
        # outlier channels carry code 8 (= 0.0) here and are overwritten below
        store_pairs(out_ptr, r64[:, None] * stride_o, r64[:, None] * stride_ow, j, acc0, acc1, m0, m1, PAIRED,
                    INTERP)
        if HAS_OUTL:
            # the outlier channels of this tile: the K bf16 slots summed over ranks as one [BLOCK_R, BLOCK_K]
            # vector, scattered after every lane's store above (same words: barrier first)
            kk, idx, mo, rk64 = outlier_tile(idx_ptr, N, K, GROUP, BLOCK_R, BLOCK_G, BLOCK_K)
            a = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
            ol = (buf_ptr + OFF_O).to(tl.pointer_type(tl.bfloat16), bitcast=True)
            for _ in tl.static_range(W):
                a += tl.load(ol + rk64 * K + kk[None, :], mask=mo, other=0.0).to(tl.float32)
                ol += RANK_BYTES // 2
            tl.debug_barrier()
            tl.store(out_ptr + rk64 * stride_o + idx[None, :], a.to(out_ptr.dtype.element_ty), mask=mo)

    _launch = Launcher(_dequant_sum_kernel)


def dequant_sum(bufs: torch.Tensor, lay: Layout, outlier_idx: torch.Tensor, keep: torch.Tensor | None = None,
                out_dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None,
                block_g: int | None = None, num_warps: int | None = None, block_r: int | None = None) -> torch.Tensor:
    """Triton launcher, one kernel for groups and outlier channels: same result as `dequant_sum_ref`.

    bufs is [W, >= lay.total] uint8, rows contiguous, row stride a multiple of 16; outlier_idx int32,
    sorted; keep is unused (the quantize side's signature). out ([N, H], unit stride along H) may be the tensor that was quantized: the sum
    overwrites it in place. One launch, no allocation when `out` is given, no host sync.
    """
    if triton is None:
        raise RuntimeError("triton is not installed; use dequant_sum_ref")
    w = bufs.shape[0]
    num_warps = num_warps or NUM_WARPS
    n, h, k = lay.rows, lay.hidden, lay.n_outliers
    if out is None:
        out = torch.empty(n, h, dtype=out_dtype, device=bufs.device)
    so = out.stride(0)
    key = (w, n, h, lay.group, k, so, out.dtype, block_g, block_r, num_warps, bufs.data_ptr() % 16,
           out.data_ptr() % 16, bufs.stride(0))
    plan = _plans.get(key)
    if plan is None:
        br, bg = tile_shape(n, lay.n_groups, block_g, block_r, TILE_GROUPS)
        meta = (w, lay.group, br, bg, block_k(k), pairable(out), h % lay.group == 0, k > 0, INTERPRET)
        plan = ((-(-n // br), -(-lay.n_groups // bg), 1),
                (bufs.stride(0), n, lay.packed_bytes, h // 2, lay.n_groups, k, lay.off_scales, lay.off_outliers, so,
                 so // 2) + meta)
        if len(_plans) > 1024:  # prefill lengths vary: keep the cache bounded
            _plans.clear()
        _plans[key] = plan
    _launch(key, plan[0], (bufs, outlier_idx, out) + plan[1], num_warps)
    return out


_plans: dict[tuple, tuple] = {}
