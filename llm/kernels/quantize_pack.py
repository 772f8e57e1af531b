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
fixed by calibration and never travel. The kernels mark outlier channels with a static `slot_map()`
(one int32 per channel pair: slot + 1 of the even channel in the low 16 bits, of the odd one in the
high 16 bits, 0 for inliers: one contiguous load serves a pair) and move the outlier values as one
short vector of the K slots per program.

Error feedback (optional, `err`): the rank quantizes x - err instead of x and then overwrites err with
its new quantization error, dequant(message) - (x - err). The caller passes the same err buffer to the
next reduction of the same forward pass, so the residual stream, which adds up every reduction, never
accumulates more than one reduction's error (`llm.parallel.quant_comm` keeps that state).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch reference is the only path
    triton = None
    tl = None
try:
    from triton.language.extra import libdevice
except ImportError:  # older Triton: the CUDA module directly
    libdevice = getattr(getattr(tl, "extra", None), "cuda", None)
    libdevice = getattr(libdevice, "libdevice", None)

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read once, as Triton does
# codes = floor(x * (1 / scale) + 0.5) with the reciprocal per group (False), or floor(x / scale + 0.5)
# with an IEEE division per value (True: ~2x the instructions of the whole kernel); the reference and
# the kernels agree bit for bit either way
EXACT_DIV = False

QMAX = 7
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


def slot_map(outlier_idx: torch.Tensor, hidden: int) -> torch.Tensor:
    """[ceil(H/2)] int32: for channels 2j and 2j+1, (slot + 1) of each in the low / high 16 bits, where
    outlier channel outlier_idx[k] has slot k and every other channel 0 (no slot)."""
    k = outlier_idx.numel()
    if k >= 1 << 15:
        raise ValueError(f"at most 32767 outlier channels, got {k}")
    slot = torch.zeros(2 * ((hidden + 1) // 2), dtype=torch.int32, device=outlier_idx.device)
    slot[outlier_idx.long()] = torch.arange(1, k + 1, dtype=torch.int32, device=outlier_idx.device)
    return slot[0::2] | (slot[1::2] << 16)


def quantize_pack_ref(x: torch.Tensor, outlier_idx: torch.Tensor, group: int, out: torch.Tensor | None = None,
                      err: torch.Tensor | None = None, err_in: bool = True,
                      exact_div: bool = EXACT_DIV) -> torch.Tensor:
    """Torch reference: quantize x [N, H] into a flat uint8 message (see module docstring).

    err ([N, H], x's dtype), if given, is read (unless err_in is False: no previous error) and then
    overwritten with the new quantization error. Bytes moved: reads N*H*x.element_size(), writes
    N*(ceil(H/2) + 2*ceil(H/G) + 2*K): for bf16 and G=128, K=H/64, 2 bytes in and ~0.55 out per value;
    error feedback adds 2 bytes in (unless err_in is False) and 2 out.
    """
    n, h = x.shape
    k = outlier_idx.numel()
    lay = layout(n, h, group, k)
    buf = torch.zeros(lay.total, dtype=torch.uint8, device=x.device) if out is None else out
    packed, scales, outl = views(buf, lay)
    xf = x.float()
    if err is not None and err_in:
        xf = xf - err.float()
    xo = xf[:, outlier_idx].to(torch.bfloat16)
    outl.copy_(xo)
    xi = xf.clone()
    xi[:, outlier_idx] = 0.0
    pad = lay.n_groups * group - h
    xg = torch.nn.functional.pad(xi, (0, pad)).view(n, lay.n_groups, group)
    absmax = xg.abs().amax(dim=-1)
    sc = (absmax * INV_QMAX).clamp(max=65504.0).to(torch.float16)
    scales.copy_(sc)
    scf = sc.float().unsqueeze(-1)
    safe = torch.where(scf > 0, scf, 1.0)
    q = xg / safe if exact_div else xg * (1.0 / safe)
    q = torch.floor(torch.where(scf > 0, q, 0.0) + 0.5).clamp(-QMAX, QMAX)
    if err is not None:
        deq = (q * scf).view(n, -1)[:, :h]
        deq[:, outlier_idx] = xo.float()
        err.copy_(deq - xf)
    q = q.to(torch.int32) + 8
    # G is even, so the padded groups always cover 2*PB channels; past H they hold code 8 (= 0.0)
    q = q.view(n, -1)[:, : 2 * lay.packed_bytes]
    packed.copy_((q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8))
    return buf


if triton is not None:

    @triton.jit
    def load_pairs(ptr, ptr32, row_off, j, m0, m1, PAIRED: tl.constexpr):
        """Channels 2j and 2j+1 as fp32; PAIRED: bf16 loaded two at a time as one 32-bit word.

        row_off is in 32-bit words if PAIRED, else in elements (the launcher passes the stride in the
        unit used, so the compiler sees its divisibility and vectorizes)."""
        if PAIRED:
            v = tl.load(ptr32 + row_off + j, mask=m0, other=0)
            # a bf16 is the top half of the fp32 with the same value
            a = (v << 16).to(tl.float32, bitcast=True)
            b = (v & -65536).to(tl.float32, bitcast=True)
        else:
            a = tl.load(ptr + row_off + 2 * j, mask=m0, other=0.0).to(tl.float32)
            b = tl.load(ptr + row_off + 2 * j + 1, mask=m1, other=0.0).to(tl.float32)
        return a, b

    @triton.jit
    def store_pairs(ptr, ptr32, row_off, j, a, b, m0, m1, PAIRED: tl.constexpr):
        """Store fp32 a, b into channels 2j, 2j+1 of ptr's dtype; PAIRED: as one 32-bit word of bf16s."""
        if PAIRED:
            lo = a.to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) & 65535
            hi = b.to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) << 16
            tl.store(ptr32 + row_off + j, lo | hi, mask=m0)
        else:
            tl.store(ptr + row_off + 2 * j, a.to(ptr.dtype.element_ty), mask=m0)
            tl.store(ptr + row_off + 2 * j + 1, b.to(ptr.dtype.element_ty), mask=m1)

    @triton.jit
    def _quantize_pack_kernel(x_ptr, x32_ptr, slot_ptr, idx_ptr, e_ptr, e32_ptr, buf_ptr, half_ptr, bhalf_ptr,
                              H, stride_x, stride_e, stride_xe, stride_ee, PB, NG, K, OFF_S2, OFF_O2, INV_Q,
                              GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr,
                              PAIRED: tl.constexpr, ERR_IN: tl.constexpr, ERR_OUT: tl.constexpr,
                              HAS_OUTL: tl.constexpr, EXACT_DIV: tl.constexpr, INTERP: tl.constexpr):
        # buf_ptr / half_ptr / bhalf_ptr: the same message as uint8 / fp16 / bf16; OFF_*2 in 2-byte units;
        # stride_x / stride_e in 32-bit words if PAIRED (see load_pairs), stride_xe / stride_ee in elements.
        # One program: BLOCK_G groups of one row, held as [BLOCK_G, GROUP/2] pairs of channels (2j, 2j+1),
        # so the two nibbles of a byte come from the same lane: no interleaving shuffles.
        row = tl.program_id(0).to(tl.int64)
        half: tl.constexpr = GROUP // 2
        g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
        if HAS_OUTL:
            # the outlier channels of this program's range, as one short vector per BLOCK_K of the K slots
            # (not a per-channel scatter: that costs address math and a predicated store on every lane)
            c_lo = tl.program_id(1) * BLOCK_G * GROUP
            kk = tl.arange(0, BLOCK_K)
            for k0 in range(0, K, BLOCK_K):
                mk = (k0 + kk) < K
                idx = tl.load(idx_ptr + k0 + kk, mask=mk, other=-1)
                mo = mk & (idx >= c_lo) & (idx < c_lo + BLOCK_G * GROUP)
                v = tl.load(x_ptr + row * stride_xe + idx, mask=mo, other=0.0).to(tl.float32)
                if ERR_IN:
                    v -= tl.load(e_ptr + row * stride_ee + idx, mask=mo, other=0.0).to(tl.float32)
                tl.store(bhalf_ptr + OFF_O2 + row * K + k0 + kk, v.to(tl.bfloat16), mask=mo)
            # the error buffer is read above and overwritten below by other lanes of this program
            tl.debug_barrier()
        j = g[:, None] * half + tl.arange(0, half)[None, :]              # byte / pair index in the row
        mg = g[:, None] < NG
        m0 = (2 * j < H) & mg
        m1 = (2 * j + 1 < H) & mg
        x0, x1 = load_pairs(x_ptr, x32_ptr, row * stride_x, j, m0, m1, PAIRED)
        if ERR_IN:
            e0, e1 = load_pairs(e_ptr, e32_ptr, row * stride_e, j, m0, m1, PAIRED)
            x0 -= e0
            x1 -= e1
        if HAS_OUTL:
            sp = tl.load(slot_ptr + j, mask=m0, other=0)
            o0 = (sp & 65535) != 0
            o1 = (sp >> 16) != 0
            i0 = tl.where(o0, 0.0, x0)
            i1 = tl.where(o1, 0.0, x1)
        else:
            i0 = x0
            i1 = x1
        absmax = tl.maximum(tl.max(tl.abs(i0), axis=1), tl.max(tl.abs(i1), axis=1))
        sc = tl.minimum(absmax * INV_Q, 65504.0).to(tl.float16)
        tl.store(half_ptr + OFF_S2 + row * NG + g, sc, mask=g < NG)
        scf = sc.to(tl.float32)[:, None]
        safe = tl.where(scf > 0, scf, 1.0)
        if EXACT_DIV:
            q0 = tl.math.div_rn(i0, safe)
            q1 = tl.math.div_rn(i1, safe)
        else:
            # one IEEE division per group, then a multiplication that must not fuse with the + 0.5 below
            # into an FMA (one rounding instead of torch's two): mul_rn is never contracted
            r = tl.math.div_rn(tl.full(safe.shape, 1.0, tl.float32), safe)
            if INTERP:
                q0 = i0 * r
                q1 = i1 * r
            else:
                q0 = libdevice.mul_rn(i0, r)
                q1 = libdevice.mul_rn(i1, r)
        q0 = tl.where(scf > 0, q0, 0.0)
        q1 = tl.where(scf > 0, q1, 0.0)
        q0 = tl.minimum(tl.maximum(tl.floor(q0 + 0.5), -7.0), 7.0)
        q1 = tl.minimum(tl.maximum(tl.floor(q1 + 0.5), -7.0), 7.0)
        byte = (q0.to(tl.int32) + 8) | ((q1.to(tl.int32) + 8) << 4)
        tl.store(buf_ptr + row * PB + j, byte.to(tl.uint8), mask=m0)
        if ERR_OUT:
            d0 = q0 * scf
            d1 = q1 * scf
            if HAS_OUTL:  # outliers travel as bf16: their error is the bf16 rounding
                d0 = tl.where(o0, x0.to(tl.bfloat16).to(tl.float32), d0)
                d1 = tl.where(o1, x1.to(tl.bfloat16).to(tl.float32), d1)
            store_pairs(e_ptr, e32_ptr, row * stride_e, j, d0 - x0, d1 - x1, m0, m1, PAIRED)


def pairable(*ts: torch.Tensor) -> bool:
    """Whether the kernels may move these [N, H] tensors as 32-bit words of two bf16 channels."""
    return all(t.dtype == torch.bfloat16 and t.shape[-1] % 2 == 0 and t.stride(0) % 2 == 0
               and t.data_ptr() % 4 == 0 for t in ts)


def quantize_pack(x: torch.Tensor, outlier_idx: torch.Tensor, slots: torch.Tensor, group: int,
                  out: torch.Tensor | None = None, block_g: int = 4, err: torch.Tensor | None = None,
                  err_in: bool = True, num_warps: int = 2, exact_div: bool = EXACT_DIV) -> torch.Tensor:
    """Triton launcher: same result as `quantize_pack_ref` (x [N, H] row-major; outlier_idx int32 sorted;
    slots = slot_map(outlier_idx, H))."""
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
    e = x if err is None else err
    paired = pairable(x, e)
    x32 = x.view(torch.int32) if paired else x
    e32 = e.view(torch.int32) if paired else e
    unit = 2 if paired else 1  # strides in 32-bit words when bf16 pairs move together
    grid = (n, triton.cdiv(lay.n_groups, block_g))
    _quantize_pack_kernel[grid](x, x32, slots, outlier_idx, e, e32, buf, buf.view(torch.float16),
                                buf.view(torch.bfloat16), h, x.stride(0) // unit, e.stride(0) // unit,
                                x.stride(0), e.stride(0), lay.packed_bytes, lay.n_groups, k,
                                lay.off_scales // 2, lay.off_outliers // 2, INV_QMAX,
                                GROUP=group, BLOCK_G=block_g, BLOCK_K=max(16, min(128, triton.next_power_of_2(max(k, 1)))),
                                PAIRED=paired, ERR_IN=err is not None and err_in, ERR_OUT=err is not None,
                                HAS_OUTL=k > 0, EXACT_DIV=exact_div, INTERP=INTERPRET, num_warps=num_warps)
    return buf
