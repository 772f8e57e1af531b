"""Low-bit all-reduce for tensor-parallel activations (after arXiv 2411.07942).

The partial sums that row-parallel layers reduce have a few channels with consistently large
magnitude. Calibration records per-channel ranges of each site's partials (EMA of the per-batch
absmax over calibration prompts); the top-k channels (k ~ hidden/64, the largest range on any rank)
travel exactly in bf16 and every other value as a 4-bit code in groups of G channels with one fp16
scale per group. Two ways to reduce:

- one-shot: all-gather every rank's quantized partial, then each rank dequantizes and sums all W
  in fp32 (one quantization error, (W-1) x payload received per rank); on GPUs with peer access the
  quantize kernel pushes its message into the peers' mapped buffers instead of an NCCL all-gather
  (`llm.parallel.p2p`, transport "p2p");
- two-shot: all-to-all row chunks, each rank dequantizes + sums its chunk, re-quantizes it and
  all-gathers the chunks (two quantization errors, 2 (W-1)/W x payload per rank).

Error feedback (default on): within one forward pass every reduction is added to the residual stream,
so quantization errors of consecutive reductions pile up there. Each rank keeps its own error of the
previous reduction site and subtracts it from its next partial before quantizing: the residual stream
then carries only the latest reduction's error (the sum telescopes), while each sublayer still sees
the one error of the reduction just before it. No extra bits travel; ranks stay bit-identical (they
sum the same messages). This is what cut the perplexity damage of the default models by ~3x.

Exact last site (`QuantCommConfig.exact_last`, default on): the last reduction of a forward pass (the
last layer's MLP) subtracts the carried error and then takes a plain all-reduce. The residual stream
that reaches the final norm and the LM head then holds no reduction error at all, only what earlier
errors changed in the sublayers' inputs. One of 2 x layers reductions travels at full width: on the
6-layer default models 5.34 bits per value averaged over a forward pass instead of 4.375 (perplexity
ratio 1.011 -> 1.006 dense, docs/bench/tp.md); on a 32-layer model 4.55. It needs the sites to be named
`layers.<i>.<attn|mlp>` (`llm.parallel.tp.reduction_sites`); other names keep every site quantized.

All ranks compute bit-identical results in both modes (they reduce the same bytes in the same order).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from llm.kernels import dequant_sum as ds
from llm.kernels import quantize_pack as qp

log = logging.getLogger(__name__)

_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
CALIB_VERSION = 1
# The size gate: messages below this many bytes take plain NCCL all-reduce. Measured by bench/tp_comm.py
# and bench/tp_e2e.py on 2 x H200 with the session-4 kernels (docs/bench/tp.md, the default config with
# error feedback). With NCCL_P2P_DISABLE=1 (PCIe-like, and what multi-node TP sees) one-shot is faster
# from 1 MB (1.04x; 2.11x at 8 MB, 2.61x at 32 MB, 2.82x at 128 MB). Over NVLink it is faster in the
# all-reduce bench from 16 MB (1.09x; 1.28x at 32 MB, 1.36x at 128 MB), but end to end an 8k-token
# prefill of the 8B shape is not (163.0 vs 158.9 ms with a 1 MB gate; 2k tokens 40.2 vs 39.8 ms), so the
# default keeps NCCL there until that gap is understood; QuantCommConfig(min_bytes=16 << 20) opts in.
GATE_NVLINK: int | None = None  # None: never quantize
GATE_NO_P2P: int = 1 << 20
# With the p2p transport (session 6, 2 x H200, docs/bench/tp.md): faster than NCCL bf16 from 4 MB at every
# larger size (1.36x at 4 MB, 1.75x at 32 MB, 2.06x at 128 MB); end to end, two runs of the 8B shape:
# TTFT 10.2% / 4.9% lower at 2k tokens (16 MB messages), 0.7% higher / 3.6% lower at 8k
GATE_P2P: int = 4 << 20
_NEVER = 1 << 62


def default_min_bytes(device: torch.device) -> int:
    """The measured gate for this machine's path between ranks (see GATE_* above)."""
    if device.type != "cuda":
        return GATE_NO_P2P
    multi_node = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) < int(os.environ.get("WORLD_SIZE", "0") or 0)
    p2p = (os.environ.get("NCCL_P2P_DISABLE", "0") != "1" and not multi_node
           and torch.cuda.device_count() > 1 and torch.cuda.can_device_access_peer(0, 1))
    if p2p:
        return _NEVER if GATE_NVLINK is None else GATE_NVLINK
    return GATE_NO_P2P


@dataclass
class QuantCommConfig:
    """How the quantized all-reduce encodes and moves data."""

    group_size: int = 128
    outlier_div: int = 64          # k = hidden // outlier_div outlier channels; 0 = naive int4
    mode: str = "one_shot"         # or "two_shot"
    min_bytes: int | None = None   # None: default_min_bytes() of the device (measured)
    use_triton: bool | None = None  # None: Triton kernels on CUDA, torch reference elsewhere
    # Triton tiles (block_r rows x block_g groups per program, num_warps) of the quantize and dequant+sum
    # kernels; None (or None entries): each kernel's defaults (bench/tp_kernels.py sweeps them)
    quant_tile: tuple[int | None, int | None, int | None] | None = None
    dequant_tile: tuple[int | None, int | None, int | None] | None = None
    error_feedback: bool = True    # carry each rank's quantization error to the next site (module doc)
    chunks: int = 1                # one-shot pipeline: quantize / all-gather / dequant of row chunks overlap
    chunk_min_bytes: int = 16 << 20  # fewer chunks than `chunks` when they would be smaller than this
    # how one-shot messages travel: "nccl" (all-gather), "p2p" (the quantize kernel pushes them into the
    # peers' mapped buffers, llm.parallel.p2p; needs peer access), "auto" (p2p where available)
    transport: str = "auto"
    # the forward pass's last site (by `layers.<i>.<attn|mlp>` name) is summed exactly after taking the
    # carried error (module doc); off: every site is quantized
    exact_last: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("one_shot", "two_shot"):
            raise ValueError(f"mode must be one_shot or two_shot, got {self.mode!r}")
        if self.transport not in ("auto", "nccl", "p2p"):
            raise ValueError(f"transport must be auto, nccl or p2p, got {self.transport!r}")
        if self.group_size <= 0 or self.group_size % 2:
            raise ValueError(f"group_size must be a positive even number, got {self.group_size}")
        if self.outlier_div < 0:
            raise ValueError("outlier_div must be >= 0")

    def n_outliers(self, hidden: int) -> int:
        return 0 if self.outlier_div == 0 else max(1, hidden // self.outlier_div)


@dataclass
class Calibration:
    """Per-site per-rank channel ranges [W, H], versioned with the checkpoint and the TP degree."""

    ranges: dict[str, torch.Tensor]
    tp: int
    checkpoint: str = ""
    n_prompts: int = 0
    ema: float = 0.9
    meta: dict = field(default_factory=dict)

    def outliers(self, site: str, k: int) -> torch.Tensor:
        """The k channels with the largest calibrated range on any rank, sorted (int32)."""
        if k == 0:
            return torch.zeros(0, dtype=torch.int32)
        r = self.ranges[site].float().amax(dim=0)
        return torch.topk(r, k).indices.sort().values.to(torch.int32)

    def save(self, path: str) -> None:
        """Write a small safetensors file with the version, checkpoint hash and TP degree as metadata."""
        from safetensors.torch import save_file

        meta = {"version": str(CALIB_VERSION), "tp": str(self.tp), "checkpoint": self.checkpoint,
                "n_prompts": str(self.n_prompts), "ema": str(self.ema), "extra": json.dumps(self.meta)}
        save_file({k: v.contiguous().float() for k, v in self.ranges.items()}, path, metadata=meta)

    @classmethod
    def load(cls, path: str, tp: int | None = None, checkpoint: str | None = None) -> Calibration:
        """Read a calibration file; raise ValueError if it was made for another TP degree or checkpoint."""
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            ranges = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        if int(meta.get("version", -1)) != CALIB_VERSION:
            raise ValueError(f"{path}: calibration version {meta.get('version')} != {CALIB_VERSION}")
        cal = cls(ranges=ranges, tp=int(meta["tp"]), checkpoint=meta.get("checkpoint", ""),
                  n_prompts=int(meta.get("n_prompts", 0)), ema=float(meta.get("ema", 0.9)),
                  meta=json.loads(meta.get("extra", "{}")))
        if tp is not None and cal.tp != tp:
            raise ValueError(f"{path}: calibrated for TP={cal.tp}, running TP={tp}")
        if checkpoint and cal.checkpoint and cal.checkpoint != checkpoint:
            raise ValueError(f"{path}: calibrated for checkpoint {cal.checkpoint}, loaded {checkpoint}")
        return cal


class RangeRecorder:
    """Calibration observer for `comm`: EMA of per-channel absmax of each site's local partial."""

    def __init__(self, ema: float = 0.9) -> None:
        self.ema = ema
        self.ranges: dict[str, torch.Tensor] = {}

    def __call__(self, site: str, x: torch.Tensor) -> None:
        cur = x.detach().reshape(-1, x.shape[-1]).abs().amax(dim=0).float().cpu()
        prev = self.ranges.get(site)
        self.ranges[site] = cur if prev is None else self.ema * prev + (1 - self.ema) * cur

    def gather(self, group=None) -> dict[str, torch.Tensor]:
        """Stack every rank's ranges into [W, H] per site (collective: call on all ranks)."""
        from llm.parallel.state import get_tp

        w = dist.get_world_size(group) if dist.is_initialized() else 1
        dev = get_tp().device  # NCCL gathers device tensors only
        out = {}
        for site in sorted(self.ranges):
            r = self.ranges[site]
            if w == 1:
                out[site] = r[None]
                continue
            r = r.to(dev)
            parts = [torch.empty_like(r) for _ in range(w)]
            dist.all_gather(parts, r, group=group)
            out[site] = torch.stack(parts).cpu()
        return out


def last_site(sites) -> str | None:
    """The site that comes last in a forward pass, if every name is `layers.<i>.<attn|mlp>`, else None."""
    order = {}
    for name in sites:
        m = re.fullmatch(r"layers\.(\d+)\.(attn|mlp)", name)
        if m is None:
            return None
        order[name] = (int(m.group(1)), m.group(2) == "mlp")
    return max(order, key=order.get) if order else None


class _Site:
    """A site's outlier channels on the device, built lazily on first use."""

    def __init__(self, idx: torch.Tensor, hidden: int, device: torch.device) -> None:
        self.idx = idx.to(device=device, dtype=torch.int32)
        self.idx_long = self.idx.long()
        self.keep = qp.keep_map(self.idx, hidden)


class QuantAllReduce:
    """The quantized all-reduce of one process group, with per-site calibrated outliers."""

    def __init__(self, cfg: QuantCommConfig, calib: Calibration | None = None, group=None) -> None:
        self.cfg = cfg
        self.calib = calib
        self.group = group
        self._sites: dict[tuple[str, int, torch.device], _Site] = {}
        self._min_bytes = cfg.min_bytes
        self._order: dict[str, int] = {}   # site -> position in the forward pass (first seen order)
        self._last = -1                    # position of the previous quantized site
        self._err: torch.Tensor | None = None  # this rank's error of the previous site (error feedback)
        self._valid = False                # whether _err holds the previous site's error
        self._bufs: dict[tuple, tuple[torch.Tensor, ...]] = {}  # all-gather targets, reused
        self._world: tuple[int, int] | None = None  # (size, rank) of the group, read once
        self._p2p = None                   # P2PWorkspace, False where messages go through NCCL
        # the site summed exactly (cfg.exact_last), None where every site is quantized
        self._exact = last_site(calib.ranges) if cfg.exact_last and calib is not None else None

    def min_bytes(self, device: torch.device) -> int:
        """Messages of at least this many bytes take the low-bit path."""
        if self._min_bytes is None:
            self._min_bytes = GATE_P2P if self._use_p2p(device) else default_min_bytes(device)
            log.info("quantized all-reduce size gate: %d bytes", self._min_bytes)
        return self._min_bytes

    def _site(self, site: str, hidden: int, device: torch.device) -> _Site:
        key = (site, hidden, device)
        s = self._sites.get(key)
        if s is None:
            k = self.cfg.n_outliers(hidden)
            if k and (self.calib is None or site not in self.calib.ranges):
                raise KeyError(f"no calibration for site {site!r}")
            idx = self.calib.outliers(site, k) if k else torch.zeros(0, dtype=torch.int32)
            s = self._sites[key] = _Site(idx, hidden, device)
        return s

    def bits_per_value(self, hidden: int, rows: int = 1) -> float:
        """Average bits per value on the wire (codes + fp16 scales + bf16 outliers; indices are static)."""
        return qp.layout(rows, hidden, self.cfg.group_size, self.cfg.n_outliers(hidden)).bits_per_value

    def forward_bits_per_value(self, hidden: int, rows: int = 1) -> float:
        """Average bits per value over one forward pass's reductions: the exact last site (if any) counted
        at 16 bits (bf16, the serving dtype), every other calibrated site at `bits_per_value`."""
        b = self.bits_per_value(hidden, rows)
        n = len(self.calib.ranges) if self.calib is not None else 0
        if self._exact is None or n == 0:
            return b
        return ((n - 1) * b + 16.0) / n

    def _triton(self, x: torch.Tensor) -> bool:
        return self._triton_on(x.device)

    def _triton_on(self, device: torch.device) -> bool:
        if self.cfg.use_triton is not None:
            return self.cfg.use_triton
        return device.type == "cuda" and qp.triton is not None

    def quantize(self, x2: torch.Tensor, s: _Site, out: torch.Tensor | None = None,
                 err: torch.Tensor | None = None, err_in: bool = True,
                 peers: torch.Tensor | None = None) -> torch.Tensor:
        """One rank's message for x2 [N, H]; with err, error feedback (read unless not err_in, then written);
        with peers (Triton only), also written at those byte distances from out (the p2p transport)."""
        if self._triton(x2):
            br, bg, nw = self.cfg.quant_tile or (None, None, None)
            return qp.quantize_pack(x2, s.idx, s.keep, self.cfg.group_size, out=out, block_g=bg, err=err,
                                    err_in=err_in, num_warps=nw, block_r=br, peers=peers)
        return qp.quantize_pack_ref(x2, s.idx_long, self.cfg.group_size, out=out, err=err, err_in=err_in)

    def dequant_sum(self, bufs: torch.Tensor, lay: qp.Layout, s: _Site, dtype: torch.dtype,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of the W messages in bufs [W, lay.total], as [N, H] of dtype (into out if given)."""
        if self._triton(bufs):
            br, bg, nw = self.cfg.dequant_tile or (None, None, None)
            return ds.dequant_sum(bufs, lay, s.idx, s.keep, out_dtype=dtype, out=out, block_g=bg, num_warps=nw,
                                  block_r=br)
        res = ds.dequant_sum_ref(bufs, lay, s.idx_long, out_dtype=dtype)
        if out is not None:
            out.copy_(res)
            return out
        return res

    def _buffer(self, tag: str, w: int, nbytes: int, device: torch.device,
                rank: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A cached [w, nbytes] gather buffer, its flat view (what the all-gather takes) and its row `rank`:
        views cost host time too."""
        # reuse is safe: the next collective into it is stream-ordered after this call's kernels
        key = (tag, w, nbytes, device, rank)
        b = self._bufs.get(key)
        if b is None:
            if len(self._bufs) > 32:  # many shapes (prefill buckets): keep the cache small
                self._bufs.clear()
            t = torch.empty(w, nbytes, dtype=torch.uint8, device=device)
            b = self._bufs[key] = (t, t.view(-1), t[rank])
        return b

    def _use_p2p(self, device: torch.device) -> bool:
        """Whether one-shot messages travel through mapped peer memory (decided once)."""
        if self._p2p is None:
            from llm.parallel import p2p

            want = self.cfg.transport
            one_shot = self.cfg.mode == "one_shot" and self.cfg.chunks <= 1  # p2p serves unchunked one-shot
            ok = (want != "nccl" and one_shot and device.type == "cuda" and self._triton_on(device)
                  and p2p.available(self.group, device))
            if want == "p2p" and not ok:
                raise RuntimeError("transport='p2p' needs CUDA peer access between all ranks, Triton, and "
                                   "the one-shot mode without chunks")
            self._p2p = p2p.P2PWorkspace(self.group, device) if ok else False
            log.info("quantized all-reduce transport: %s", "p2p" if ok else "nccl")
        return bool(self._p2p)

    def p2p(self, x: torch.Tensor):
        """The p2p workspace when one-shot messages travel through mapped peer memory, else None."""
        return self._p2p if self._use_p2p(x.device) else None

    def _group(self) -> tuple[int, int]:
        if self._world is None:
            self._world = (dist.get_world_size(self.group), dist.get_rank(self.group))
        return self._world

    def _feedback(self, site: str, x2: torch.Tensor) -> tuple[torch.Tensor | None, bool]:
        """(error buffer, whether it holds the previous site's error) for this call."""
        if not self.cfg.error_feedback:
            return None, False
        pos = self._order.setdefault(site, len(self._order))
        e = self._err
        same = e is not None and e.shape == x2.shape and e.dtype == x2.dtype and e.device == x2.device
        # a site at or before the previous one starts a new forward pass: no error to carry
        carry = same and self._valid and pos > self._last
        self._last = pos
        if not same:
            e = self._err = torch.empty_like(x2)
        self._valid = True
        return e, carry

    def reset(self) -> None:
        """Forget the carried error (the next call starts a forward pass)."""
        self._valid = False

    def __call__(self, x: torch.Tensor, site: str) -> torch.Tensor:
        """Sum x over the group with low-bit messages, in place like a plain all-reduce: the result
        overwrites x (or its contiguous copy, when x is not viewable as rows) and is returned.

        Capturable in a CUDA graph once warm (one call per shape before capture allocates the
        buffers): no host syncs, no allocations, a fixed sequence of launches.
        """
        shape, h = x.shape, x.shape[-1]
        x2 = x if x.dim() == 2 else x.reshape(-1, h)
        s = self._site(site, h, x.device)
        w, rank = self._group()
        err, carry = self._feedback(site, x2)
        if site == self._exact:
            # the carried error leaves the residual stream here: nothing quantized reaches the LM head.
            # Under CUDA-graph capture with the p2p transport this NCCL call also orders the next replay's
            # first push after the peer's last dequant (p2p module doc: the count of p2p reductions in a
            # forward pass becomes odd)
            if carry:
                x2.sub_(err)
            self._valid = False
            dist.all_reduce(x2, group=self.group)
            return x2 if x2 is x else x2.view(shape)
        if self.cfg.mode == "two_shot" and x2.shape[0] >= w:
            return self._two_shot(x2, s, w, err, carry).view(shape)
        n = x2.shape[0]
        if self.cfg.chunks > 1:
            c = min(self.cfg.chunks, n, x2.numel() * x2.element_size() // max(1, self.cfg.chunk_min_bytes))
            if c > 1:
                return self._pipelined(x2, s, w, err, carry, c).view(shape)
        lay = qp.layout(n, h, self.cfg.group_size, s.idx.numel())
        ws = self.p2p(x2)
        if ws is not None:
            # the kernel writes the message into this rank's row here and in every peer's buffer
            bufs, mine, peers = ws.slot(lay.total)
            self.quantize(x2, s, out=mine, err=err, err_in=carry, peers=peers)
            ws.barrier()
        else:
            bufs, flat, mine = self._buffer("one", w, lay.total, x.device, rank)
            # quantize straight into this rank's slot of the gather buffer (in-place all-gather)
            self.quantize(x2, s, out=mine, err=err, err_in=carry)
            _gather(flat, mine, group=self.group)
        # x2 has been consumed by the quantize kernel (stream order): the sum goes into it
        out = self.dequant_sum(bufs, lay, s, x.dtype, out=x2)
        return out if x2 is x else out.view(shape)

    def _pipelined(self, x2: torch.Tensor, s: _Site, w: int, err: torch.Tensor | None, carry: bool,
                   c: int) -> torch.Tensor:
        """One-shot over c row chunks: chunk i+1 is quantized while chunk i's all-gather runs, and
        chunk i is dequantized while later all-gathers run (NCCL has its own stream)."""
        n, h = x2.shape
        rank = self._group()[1]
        out = x2  # chunk i's sum lands after every chunk's quantize read its rows (stream order)
        step = -(-n // c)
        pending = []
        for i, a in enumerate(range(0, n, step)):
            b = min(n, a + step)
            lay = qp.layout(b - a, h, self.cfg.group_size, s.idx.numel())
            bufs, flat, mine = self._buffer(f"chunk{i}", w, lay.total, x2.device, rank)
            e = None if err is None else err[a:b]
            self.quantize(x2[a:b], s, out=mine, err=e, err_in=carry)
            pending.append((a, b, lay, bufs, _gather(flat, mine, group=self.group, async_op=True)))
        for a, b, lay, bufs, work in pending:
            work.wait()
            self.dequant_sum(bufs, lay, s, x2.dtype, out=out[a:b])
        return out

    def _two_shot(self, x2: torch.Tensor, s: _Site, w: int, err: torch.Tensor | None,
                  carry: bool) -> torch.Tensor:
        n, h = x2.shape
        rows = -(-n // w)
        if rows * w != n:
            x2 = torch.nn.functional.pad(x2, (0, 0, 0, rows * w - n))
            err = None  # padded shapes: no feedback (rare: row counts not divisible by W)
            self.reset()
        lay = qp.layout(rows, h, self.cfg.group_size, s.idx.numel())
        dev = x2.device
        send, send_flat, _ = self._buffer("send", w, lay.total, dev)
        for r in range(w):
            e = None if err is None else err[r * rows:(r + 1) * rows]
            self.quantize(x2[r * rows:(r + 1) * rows], s, out=send[r], err=e, err_in=carry)
        recv, recv_flat, _ = self._buffer("recv", w, lay.total, dev)
        dist.all_to_all_single(recv_flat, send_flat, group=self.group)
        chunk = self.dequant_sum(recv, lay, s, torch.float32)
        rank = self._group()[1]
        e2 = None if err is None else torch.empty_like(chunk)
        bufs, flat, mine = self._buffer("two", w, lay.total, dev, rank)
        self.quantize(chunk, s, out=mine, err=e2, err_in=False)
        if e2 is not None:  # the second quantization's error is this rank's to correct as well
            err[rank * rows:(rank + 1) * rows] += e2.to(err.dtype)
        _gather(flat, mine, group=self.group)
        # x2's rows were consumed by the first quantize (stream order): the sums go into them
        for r in range(w):
            self.dequant_sum(bufs[r:r + 1], lay, s, x2.dtype, out=x2[r * rows:(r + 1) * rows])
        return x2[:n]

    def describe(self) -> dict:
        return {**asdict(self.cfg), "calibrated_sites": len(self.calib.ranges) if self.calib else 0}


def configure(calib_path: str | None, cfg: QuantCommConfig | None = None, tp: int | None = None,
              checkpoint: str | None = None, group=None) -> QuantAllReduce | None:
    """Turn on the quantized all-reduce from a calibration file, or warn and keep plain all-reduce.

    Args:
        calib_path: file from `wakeline llm calibrate` (None or missing: plain all-reduce, with a warning).
        cfg: encoding and gate settings (default QuantCommConfig()).
        tp, checkpoint: what the file must have been made for (a mismatch raises ValueError).
    Returns the installed quantizer, or None.
    """
    import os

    from llm.parallel import comm

    cfg = cfg or QuantCommConfig()
    if cfg.outlier_div and (not calib_path or not os.path.exists(calib_path)):
        log.warning("quantized all-reduce requested but no calibration file (%s): using plain all-reduce; "
                    "run `wakeline llm calibrate --model DIR --tp N --out FILE`", calib_path)
        comm.set_quantizer(None)
        return None
    calib = Calibration.load(calib_path, tp=tp, checkpoint=checkpoint) if calib_path else None
    q = QuantAllReduce(cfg, calib, group=group)
    comm.set_quantizer(q)
    log.info("quantized all-reduce on: %s", q.describe())
    return q
