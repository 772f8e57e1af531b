"""Push transport of the one-shot quantized all-reduce over peer-mapped GPU memory (NVLink).

Over NVLink, NCCL's all-gather of the quantized payload was most of the quantized all-reduce
(82 of 126 us at 32 MB on 2 x H200, docs/bench/tp.md): it moves 0.28x the bytes of the bf16 all-reduce
but at a fraction of the link's bandwidth, and it is a separate pass between two kernels. Here the
quantize kernel moves the message itself:

- every rank's gather buffer [W, message bytes] lives in symmetric memory
  (`torch.distributed._symmetric_memory`): each rank maps every other rank's buffer into its address
  space, at a fixed byte distance from its own;
- the quantize kernel writes its message into its own slot and, through those distances, into the same
  slot of every peer's buffer (`quantize_pack(..., peers=)`): stores over NVLink, overlapped with the
  kernel's arithmetic, no copy and no NCCL call;
- one barrier kernel (signal pads, system-scope release / acquire) orders those stores before each
  rank's dequant+sum reads its now complete local buffer.

Two buffers alternate: a rank's push of call i+2 into buffer i % 2 can only start after barrier i+1,
which every peer reaches only after its dequant+sum of call i has read that buffer (stream order). So
one barrier per reduction. Everything is a kernel on the current stream: no host sync, capturable in a
CUDA graph once the workspace is large enough (grown, collectively, on first use of a size). A graph
replays the buffers it captured, so it must hold an even number of these reductions (a transformer
forward holds two per layer) or end with another collective: with an odd number, replay i+1's first push
would reuse the buffer of replay i's last reduction with no barrier in between. The exact last site of
`quant_comm` (on by default) makes the count odd and is that collective: an NCCL all-reduce, which
completes on one rank only after the other has reached it, i.e. after its last dequant.

Needs CUDA peer access between the two ranks' GPUs (one host) and TP=2: the kernel pushes to one peer
(two peer copies hit a Triton miscompile, quantize_pack); larger groups keep NCCL's all-gather.
`available()` says whether this process can use it. NVLink multicast is never used (TORCH_SYMM_MEM_DISABLE_MULTICAST=1 is fine).
"""

from __future__ import annotations

import logging
import os
import warnings

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# a barrier that waits longer than this for a peer traps the kernel (a dead rank): the process fails
# with a CUDA error instead of hanging (the service's rank watchdog then reports it)
BARRIER_TIMEOUT_MS = 30_000
_MIN_BYTES = 16 << 20  # smallest workspace: decode-sized messages never reallocate


def available(group=None, device: torch.device | None = None) -> bool:
    """Whether the ranks of `group` can map each other's memory (CUDA, one host, peer access on)."""
    if device is None or device.type != "cuda" or not dist.is_initialized():
        return False
    if os.environ.get("NCCL_P2P_DISABLE", "0") == "1" or os.environ.get("WAKELINE_P2P", "1") == "0":
        return False  # asked for a PCIe-like path: honour it here too
    w = dist.get_world_size(group)
    if w != 2:
        return False  # the pushing kernel writes one peer copy (see quantize_pack): TP=2 only
    local = int(os.environ.get("LOCAL_WORLD_SIZE", w) or w)
    if local < w or torch.cuda.device_count() < w:
        return False  # ranks on several hosts
    import importlib.util

    if importlib.util.find_spec("torch.distributed._symmetric_memory") is None:
        return False
    me = device.index if device.index is not None else torch.cuda.current_device()
    return all(torch.cuda.can_device_access_peer(me, d) for d in range(torch.cuda.device_count()) if d != me)


class P2PWorkspace:
    """A symmetric [2 x W x bytes] gather workspace of one process group and the byte distances to
    the peers' copies of it."""

    def __init__(self, group=None, device: torch.device | None = None) -> None:
        self.group = group
        self.device = device or torch.device("cuda", torch.cuda.current_device())
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self._buf: torch.Tensor | None = None
        self._handle = None
        self._deltas: torch.Tensor | None = None  # int64 [W-1] on the device
        self._views: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._parity = 0
        self.captured = 0  # reductions recorded into CUDA graphs (their count must be even, see above)

    @property
    def capacity(self) -> int:
        return 0 if self._buf is None else self._buf.numel()

    def _grow(self, need: int) -> None:
        """Allocate and rendezvous a workspace of at least `need` bytes (collective: every rank calls it
        at the same reduction, as they all see the same shapes)."""
        import torch.distributed._symmetric_memory as symm_mem

        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"p2p workspace must grow to {need} bytes during CUDA graph capture: "
                               "run one eager step of every shape before capturing")
        size = 1 << max(need, _MIN_BYTES).bit_length()
        name = (self.group or dist.group.WORLD).group_name
        enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
        if enable is not None and not symm_mem.is_symm_mem_enabled_for_group(name):
            with warnings.catch_warnings():  # needed before torch 2.9, a deprecated no-op since
                warnings.simplefilter("ignore", FutureWarning)
                enable(name)
        torch.cuda.current_stream().synchronize()  # the old workspace may still be read
        buf = symm_mem.empty(size, dtype=torch.uint8, device=self.device)
        handle = symm_mem.rendezvous(buf, name)
        peers = [r for r in range(self.world) if r != self.rank]
        base = buf.data_ptr()
        deltas = [handle.get_buffer(r, (size,), torch.uint8).data_ptr() - base for r in peers]
        if any(d % 16 for d in deltas):
            raise RuntimeError(f"symmetric buffers are not 16-byte aligned to each other: {deltas}")
        self._buf, self._handle = buf, handle
        self._deltas = torch.tensor(deltas, dtype=torch.int64, device=self.device)
        self._views.clear()
        log.info("p2p workspace: %d MB on rank %d (%d peers)", size >> 20, self.rank, len(peers))

    def slot(self, nbytes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This call's (gather buffer [W, nbytes], this rank's row of it, peer distances): the quantize
        kernel writes its message into the row and, at the distances, into the peers' buffers."""
        stride = -(-nbytes // 256) * 256  # rows on 256-byte boundaries, like the allocator's
        need = 2 * self.world * stride
        if need > self.capacity:
            self._grow(need)
        self._parity ^= 1
        if torch.cuda.is_current_stream_capturing():
            self.captured += 1
        key = (nbytes, self._parity)
        v = self._views.get(key)
        if v is None:
            off = self._parity * self.world * stride
            rows = self._buf[off: off + self.world * stride].view(self.world, stride)[:, :nbytes]
            v = self._views[key] = (rows, rows[self.rank])
        return v[0], v[1], self._deltas

    def barrier(self) -> None:
        """Every rank's pushes into this rank's buffer are complete and visible after this (stream order)."""
        self._handle.barrier(channel=0, timeout_ms=BARRIER_TIMEOUT_MS)
