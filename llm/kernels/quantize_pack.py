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
fixed by calibration and never travel. The kernels mark outlier channels with a static `keep_map()`
(one int32 per channel pair, 0xFFFF in the half of each inlier channel, 0 in the half of an outlier:
one contiguous load serves a pair, and an AND of the raw bf16 pair zeroes the outliers) and move the
outlier values as one short vector of the K slots per program.

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

from llm.kernels.launch import Launcher

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
# groups of channels per program and warps when the caller does not choose (bench/tp_kernels.py sweeps them)
TILE_GROUPS = 32
NUM_WARPS = 4

BITS = 4  # code width of the wire format (codes in [-7, 7])
INV_QMAX = 2.0 ** (1 - BITS)  # scale = absmax / 8: a power of two, so exact in every implementation
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


def keep_map(outlier_idx: torch.Tensor, hidden: int) -> torch.Tensor:
    """[ceil(H/2)] int32: for channels 2j and 2j+1, 0xFFFF in the low / high 16 bits where the channel is
    an inlier and 0 where it is one of the outlier channels (a bit mask of a pair of bf16 channels)."""
    keep = torch.full((2 * ((hidden + 1) // 2),), 0xFFFF, dtype=torch.int32, device=outlier_idx.device)
    keep[outlier_idx.long()] = 0
    return keep[0::2] | (keep[1::2] << 16)


def round_groups(xg: torch.Tensor, bits: int = BITS, exact_div: bool = EXACT_DIV) -> tuple[torch.Tensor, torch.Tensor]:
    """The rounding of the wire format for groups xg [..., G] (fp32): (codes as fp32 in [-qmax, qmax],
    fp16 scales [...]), scale = absmax / 2^(bits-1) (a power of two: exact), qmax = 2^(bits-1) - 1,
    round half up. The kernels carry BITS; other widths serve what-if studies (llm.parallel.quality)."""
    qmax = 2 ** (bits - 1) - 1
    sc = (xg.abs().amax(dim=-1) * 2.0 ** (1 - bits)).clamp(max=65504.0)
    sc = sc.to(torch.float16)
    scf = sc.float().unsqueeze(-1)
    safe = torch.where(scf > 0, scf, 1.0)
    q = xg / safe if exact_div else xg * (1.0 / safe)
    return torch.floor(torch.where(scf > 0, q, 0.0) + 0.5).clamp(-qmax, qmax), sc


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
    q, sc = round_groups(xg, exact_div=exact_div)
    scales.copy_(sc)
    scf = sc.float().unsqueeze(-1)
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
    def load_pairs(ptr, row_off, row_off_w, j, m0, m1, PAIRED: tl.constexpr):
        """Channels 2j and 2j+1 of a row as fp32. PAIRED: bf16 loaded two at a time as one 32-bit word
        (row_off_w in words: the launcher passes strides in the unit used, so the compiler sees their
        divisibility and vectorizes); else two strided loads (row_off in elements)."""
        if PAIRED:
            v = tl.load(ptr.to(tl.pointer_type(tl.int32), bitcast=True) + row_off_w + j, mask=m0, other=0)
            # a bf16 is the top half of the fp32 with the same value
            a = (v << 16).to(tl.float32, bitcast=True)
            b = (v & -65536).to(tl.float32, bitcast=True)
        else:
            a = tl.load(ptr + row_off + 2 * j, mask=m0, other=0.0).to(tl.float32)
            b = tl.load(ptr + row_off + 2 * j + 1, mask=m1, other=0.0).to(tl.float32)
        return a, b

    @triton.jit
    def pack_bf16x2(a, b, INTERP: tl.constexpr):
        """fp32 a, b rounded to bf16 (nearest even) as one 32-bit word, a in the low half."""
        if INTERP:
            lo = a.to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) & 65535
            hi = b.to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) << 16
            return lo | hi
        else:  # one instruction instead of two conversions and the shifts / masks that merge them
            return tl.inline_asm_elementwise("cvt.rn.bf16x2.f32 $0, $2, $1;", "=r,f,f", [a, b], dtype=tl.int32,
                                             is_pure=True, pack=1)

    @triton.jit
    def store_pairs(ptr, row_off, row_off_w, j, a, b, m0, m1, PAIRED: tl.constexpr, INTERP: tl.constexpr):
        """Store fp32 a, b into channels 2j, 2j+1 of ptr's dtype; PAIRED: as one 32-bit word of two bf16."""
        if PAIRED:
            tl.store(ptr.to(tl.pointer_type(tl.int32), bitcast=True) + row_off_w + j, pack_bf16x2(a, b, INTERP),
                     mask=m0)
        else:
            tl.store(ptr + row_off + 2 * j, a.to(ptr.dtype.element_ty), mask=m0)
            tl.store(ptr + row_off + 2 * j + 1, b.to(ptr.dtype.element_ty), mask=m1)

    @triton.jit
    def byte_offsets(offs):
        """offs, declared contiguous over 4 elements only: the code bytes then move as 32-bit words per
        lane, in the same register layout as the bf16 pairs (32-bit words, 4 per 128-bit access), instead
        of 16 bytes per lane, which would force a shuffle of the whole tile through shared memory."""
        # (a hint cannot lower what the compiler proves; index arithmetic it can see through does)
        return offs // 4 * 4 + offs % 4

    @triton.jit
    def tile(N, PB, H2, NG, GROUP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
             EVEN: tl.constexpr):
        """This program's tile: BLOCK_R rows x BLOCK_G groups, flattened to [BLOCK_R * BLOCK_G, GROUP/2]
        channel pairs (2j, 2j+1). Returns rows r [M], groups g [M], pair index j [M, GROUP/2], the
        group mask [M] and the masks of channels 2j and 2j+1. EVEN (H a multiple of GROUP): no column
        masks, so the masks are constant along a group and loads and stores vectorize."""
        HALF: tl.constexpr = GROUP // 2
        m = tl.arange(0, BLOCK_R * BLOCK_G)
        r = tl.program_id(0) * BLOCK_R + m // BLOCK_G
        g = tl.program_id(1) * BLOCK_G + m % BLOCK_G
        j = g[:, None] * HALF + tl.arange(0, HALF)[None, :]
        ok = (r < N) & (g < NG)
        if EVEN:
            m0 = tl.broadcast_to(ok[:, None], (BLOCK_R * BLOCK_G, HALF))
            m1 = m0
        else:  # j < PB, not 2j < H: a comparison the compiler can prove constant over 16 pairs
            m0 = ok[:, None] & (j < PB)
            m1 = ok[:, None] & (j < H2)
        return r, g, j, ok, m0, m1

    @triton.jit
    def outlier_tile(idx_ptr, N, K, GROUP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
                     BLOCK_K: tl.constexpr):
        """This program's calibrated outlier channels as one [BLOCK_R, BLOCK_K] tile of the K slots:
        slot index kk [BLOCK_K], channel idx [BLOCK_K], the mask (row in range, channel inside this
        program's groups) and the rows as int64 [BLOCK_R, 1]."""
        rk = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        kk = tl.arange(0, BLOCK_K)
        idx = tl.load(idx_ptr + kk, mask=kk < K, other=-1)
        c_lo = tl.program_id(1) * BLOCK_G * GROUP
        mo = (rk < N)[:, None] & ((kk < K) & (idx >= c_lo) & (idx < c_lo + BLOCK_G * GROUP))[None, :]
        return kk, idx, mo, rk.to(tl.int64)[:, None]

    @triton.jit
    def _quantize_pack_kernel(x_ptr, e_ptr, keep_ptr, idx_ptr, buf_ptr, peer_ptr, N, PB, H2, NG, K, stride_x,
                              stride_xw, stride_e, stride_ew, OFF_S, OFF_O, INV_Q,
                              GROUP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
                              BLOCK_K: tl.constexpr, PAIRED: tl.constexpr, EVEN: tl.constexpr,
                              ERR_IN: tl.constexpr, ERR_OUT: tl.constexpr, HAS_OUTL: tl.constexpr,
                              EXACT_DIV: tl.constexpr, INTERP: tl.constexpr, N_PEERS: tl.constexpr):
        # One pass over BLOCK_R rows x BLOCK_G groups. Strides: stride_* in elements, stride_*w in 32-bit
        # words (PAIRED); OFF_S / OFF_O: byte offsets of the scales (fp16) and outliers (bf16) in buf.
        # N_PEERS > 0: every store of the message is repeated at buf + peer_ptr[p] (int64 byte distances
        # to other ranks' copies of this slot, mapped peer memory): the kernel pushes the message itself.
        sc_ptr = (buf_ptr + OFF_S).to(tl.pointer_type(tl.float16), bitcast=True)
        ol_ptr = (buf_ptr + OFF_O).to(tl.pointer_type(tl.bfloat16), bitcast=True)
        if HAS_OUTL:
            # the calibrated outlier channels of this tile as one [BLOCK_R, BLOCK_K] gather of the K slots,
            # stored contiguously; v stays in registers for the error written at the end
            kk, idx, mo, rk64 = outlier_tile(idx_ptr, N, K, GROUP, BLOCK_R, BLOCK_G, BLOCK_K)
            v = tl.load(x_ptr + rk64 * stride_x + idx[None, :], mask=mo, other=0.0).to(tl.float32)
            if ERR_IN:
                v -= tl.load(e_ptr + rk64 * stride_e + idx[None, :], mask=mo, other=0.0).to(tl.float32)
            vb = v.to(tl.bfloat16)
            tl.store(ol_ptr + rk64 * K + kk[None, :], vb, mask=mo)
            for p in tl.static_range(N_PEERS):
                dp = tl.multiple_of(tl.load(peer_ptr + p), 16)  # p2p.P2PWorkspace checks it
                tl.store((buf_ptr + dp + OFF_O).to(tl.pointer_type(tl.bfloat16), bitcast=True) + rk64 * K
                         + kk[None, :], vb, mask=mo)
        r, g, j, ok, m0, m1 = tile(N, PB, H2, NG, GROUP, BLOCK_R, BLOCK_G, EVEN)
        r64 = r.to(tl.int64)[:, None]
        # i0, i1: channels 2j, 2j+1 of x - err with the outlier channels zeroed (they leave their group,
        # code 0); x0, x1: the same where the error of an outlier lane is not needed (overwritten below)
        if HAS_OUTL:
            keep = tl.load(keep_ptr + j, mask=m0, other=0)
        if PAIRED:  # an AND of the raw bf16 pair zeroes the outliers of x and err alike
            xw = tl.load(x_ptr.to(tl.pointer_type(tl.int32), bitcast=True) + r64 * stride_xw + j, mask=m0, other=0)
            if ERR_IN:
                ew = tl.load(e_ptr.to(tl.pointer_type(tl.int32), bitcast=True) + r64 * stride_ew + j, mask=m0,
                             other=0)
            if HAS_OUTL:
                xw = xw & keep
                if ERR_IN:
                    ew = ew & keep
            x0 = (xw << 16).to(tl.float32, bitcast=True)
            x1 = (xw & -65536).to(tl.float32, bitcast=True)
            if ERR_IN:
                x0 -= (ew << 16).to(tl.float32, bitcast=True)
                x1 -= (ew & -65536).to(tl.float32, bitcast=True)
            i0 = x0
            i1 = x1
        else:
            x0, x1 = load_pairs(x_ptr, r64 * stride_x, r64 * stride_xw, j, m0, m1, PAIRED)
            if ERR_IN:
                e0, e1 = load_pairs(e_ptr, r64 * stride_e, r64 * stride_ew, j, m0, m1, PAIRED)
                x0 -= e0
                x1 -= e1
            if HAS_OUTL:
                i0 = tl.where((keep & 65535) == 0, 0.0, x0)
                i1 = tl.where((keep >> 16) == 0, 0.0, x1)
            else:
                i0 = x0
                i1 = x1
        amax = tl.max(tl.maximum(tl.abs(i0), tl.abs(i1)), axis=1)
        sc = tl.minimum(amax * INV_Q, 65504.0).to(tl.float16)
        tl.store(sc_ptr + r.to(tl.int64) * NG + g, sc, mask=ok)
        for p in tl.static_range(N_PEERS):
            dp = tl.multiple_of(tl.load(peer_ptr + p), 16)  # p2p.P2PWorkspace checks it
            tl.store((buf_ptr + dp + OFF_S).to(tl.pointer_type(tl.float16), bitcast=True) + r.to(tl.int64) * NG + g,
                     sc, mask=ok)
        scf = sc.to(tl.float32)
        # a zero scale means |inliers| < 2^-22: x * 1 rounds to code 0 as the reference's where() does
        safe = tl.where(scf > 0, scf, 1.0)
        if EXACT_DIV:
            q0 = tl.math.div_rn(i0, safe[:, None])
            q1 = tl.math.div_rn(i1, safe[:, None])
        else:
            # one IEEE division per group, then a multiplication that must not fuse with the + 0.5 below
            # into an FMA (one rounding instead of torch's two): mul_rn is never contracted
            rcp = tl.math.div_rn(tl.full(safe.shape, 1.0, tl.float32), safe)[:, None]
            if INTERP:
                q0 = i0 * rcp
                q1 = i1 * rcp
            else:
                q0 = libdevice.mul_rn(i0, rcp)
                q1 = libdevice.mul_rn(i1, rcp)
        if INTERP:
            c0 = tl.floor(q0 + 0.5).to(tl.int32)
            c1 = tl.floor(q1 + 0.5).to(tl.int32)
        else:  # floor and convert in one instruction
            c0 = libdevice.float2int_rd(q0 + 0.5)
            c1 = libdevice.float2int_rd(q1 + 0.5)
        c0 = tl.minimum(tl.maximum(c0, -7), 7)
        c1 = tl.minimum(tl.maximum(c1, -7), 7)
        # (c0 + 8) | (c1 + 8) << 4, in [17, 255]; 4 bytes per store and thread (byte_offsets)
        codes = (c0 + c1 * 16 + 136).to(tl.uint8)
        tl.store(buf_ptr + byte_offsets(r64 * PB + j), codes, mask=m0)
        for p in tl.static_range(N_PEERS):
            dp = tl.multiple_of(tl.load(peer_ptr + p), 16)  # p2p.P2PWorkspace checks it
            tl.store(buf_ptr + dp + byte_offsets(r64 * PB + j), codes, mask=m0)
        if ERR_OUT:
            # the product of a code and an fp16 scale is exact in fp32: one rounding, as in the reference
            d0 = tl.fma(c0.to(tl.float32), scf[:, None], -x0)
            d1 = tl.fma(c1.to(tl.float32), scf[:, None], -x1)
            if HAS_OUTL:  # other lanes' outlier pass above read the old error here
                tl.debug_barrier()
            store_pairs(e_ptr, r64 * stride_e, r64 * stride_ew, j, d0, d1, m0, m1, PAIRED, INTERP)
            if HAS_OUTL:  # outliers travel as bf16: their error is the bf16 rounding (same words as above)
                tl.debug_barrier()
                tl.store(e_ptr + rk64 * stride_e + idx[None, :], (vb.to(tl.float32) - v).to(e_ptr.dtype.element_ty),
                         mask=mo)

    _launch = Launcher(_quantize_pack_kernel)


def pairable(*ts: torch.Tensor) -> bool:
    """Whether the kernels may move these [N, H] tensors as 32-bit words of two bf16 channels."""
    return all(t.dtype == torch.bfloat16 and t.shape[-1] % 2 == 0 and t.stride(0) % 2 == 0
               and t.data_ptr() % 4 == 0 for t in ts)


def pow2(n: int) -> int:
    """The smallest power of two >= n (plain Python: Triton's helpers cost microseconds per call)."""
    return 1 << max(0, n - 1).bit_length()


def tile_shape(n: int, n_groups: int, block_g: int | None = None, block_r: int | None = None,
               tile_groups: int = TILE_GROUPS) -> tuple[int, int]:
    """(rows, groups) of one program's tile. By default whole rows when a row has at most `tile_groups`
    groups (every outlier slot of a row is then useful to the program that loads it), and as many rows as
    make `tile_groups` groups; never more rows than the next power of two of n."""
    bg = block_g or min(pow2(n_groups), tile_groups)
    br = block_r or max(1, tile_groups // bg)
    return min(br, pow2(n)), bg


def block_k(k: int) -> int:
    """Outlier slots per vector: all K at once (the kernels keep them in registers), at least 16."""
    return max(16, pow2(max(k, 1)))


def quantize_pack(x: torch.Tensor, outlier_idx: torch.Tensor, keep: torch.Tensor, group: int,
                  out: torch.Tensor | None = None, block_g: int | None = None, err: torch.Tensor | None = None,
                  err_in: bool = True, num_warps: int | None = None, exact_div: bool = EXACT_DIV,
                  block_r: int | None = None, peers: torch.Tensor | None = None) -> torch.Tensor:
    """Triton launcher: same result as `quantize_pack_ref` (x [N, H] row-major; outlier_idx int32 sorted;
    keep = keep_map(outlier_idx, H)). One launch, no allocation when `out` is given, no host sync.

    block_r x block_g (rows x groups of `group` channels) is one program's tile (`tile_shape()`).
    peers: int64 [P] on x's device (P <= 1), the byte distance from `out` to another copy of the message
    that the kernel writes as well (the other rank's buffer mapped into this process: `llm.parallel.p2p`).
    A multiple of 16 (`P2PWorkspace` checks it): the kernel tells the compiler so, which lets the peer copy
    move in the same 16-byte stores as the local one (37.2 -> 27.0 PTX instructions per value at
    [4096, 4096] bf16 with error feedback, `scripts/gpu/quant_ptx_count.py`).
    """
    if triton is None:
        raise RuntimeError("triton is not installed; use quantize_pack_ref")
    if x.stride(1) != 1:
        x = x.contiguous()
    num_warps = num_warps or NUM_WARPS
    n, h = x.shape
    k = outlier_idx.numel()
    if out is None:
        out = torch.empty(layout(n, h, group, k).total, dtype=torch.uint8, device=x.device)
    e = x if err is None else err
    sx, se = x.stride(0), e.stride(0)
    n_peers = 0 if peers is None else peers.numel()
    if n_peers > 1:
        # Triton 3.6 on an H100 miscompiled two peer copies (fp32 input, 4096 channels: bytes 4-7 of every
        # 64 of the codes lost their +136 offset); one peer is bit-exact on every tested shape
        raise ValueError(f"quantize_pack pushes to at most one peer, got {n_peers}")
    # everything the launch depends on besides the tensors' addresses (their alignment is in the key)
    key = (n, h, sx, se, x.dtype, e.dtype, k, group, err is not None, err_in, block_g, block_r, num_warps,
           exact_div, x.data_ptr() % 16, e.data_ptr() % 16, out.data_ptr() % 16, n_peers)
    plan = _plans.get(key)
    if plan is None:
        plan = _plan(x, e, out, k, group, err is not None and err_in, err is not None, block_g, block_r, exact_div,
                     n_peers)
        if len(_plans) > 1024:  # prefill lengths vary: keep the cache bounded
            _plans.clear()
        _plans[key] = plan
    _launch(key, plan[0], (x, e, keep, outlier_idx, out, keep if peers is None else peers) + plan[1], num_warps)
    return out


_plans: dict[tuple, tuple] = {}


def _plan(x, e, out, k, group, err_in, err_out, block_g, block_r, exact_div, n_peers=0) -> tuple[tuple, tuple]:
    """(grid, the scalar and constexpr arguments) of one quantize launch."""
    if group & (group - 1):
        raise ValueError(f"the Triton kernels need a power-of-two group size, got {group}")
    n, h = x.shape
    lay = layout(n, h, group, k)
    if out.numel() < lay.total:
        raise ValueError(f"out has {out.numel()} bytes, the message needs {lay.total}")
    br, bg = tile_shape(n, lay.n_groups, block_g, block_r)
    sx, se = x.stride(0), e.stride(0)
    meta = (group, br, bg, block_k(k), pairable(x, e), h % group == 0, err_in, err_out, k > 0, exact_div, INTERPRET,
            n_peers)
    return ((-(-n // br), -(-lay.n_groups // bg), 1),
            (n, lay.packed_bytes, h // 2, lay.n_groups, k, sx, sx // 2, se, se // 2, lay.off_scales,
             lay.off_outliers, INV_QMAX) + meta)
