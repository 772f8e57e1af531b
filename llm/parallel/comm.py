"""The one module that issues collectives for tensor parallelism.

`all_reduce(x, site)` is what the row-parallel hooks call: with world size 1 it returns x; with a
quantizer configured and a message of at least `min_bytes` it takes the low-bit path of
`llm.parallel.quant_comm`; otherwise a plain all-reduce. A calibration observer, when set, sees
every local partial before it is reduced (that is how `wakeline llm calibrate` records ranges).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import torch
import torch.distributed as dist

from llm.parallel.state import get_tp

log = logging.getLogger(__name__)

_quant = None            # QuantAllReduce | None
_observer: Callable[[str, torch.Tensor], None] | None = None
stats: Counter = Counter()  # calls and bytes per path, for benches and logs


def set_quantizer(q) -> None:
    """Route large reductions through `q` (a QuantAllReduce), or back to plain all-reduce with None."""
    global _quant
    _quant = q


def get_quantizer():
    return _quant


def set_observer(fn: Callable[[str, torch.Tensor], None] | None) -> None:
    """Call fn(site, local_partial) before every reduction (calibration); None to stop."""
    global _observer
    _observer = fn


def gather_into(out: torch.Tensor, x: torch.Tensor, group=None) -> None:
    """all-gather x into the flat out (torch >= 2.13 renamed all_gather_into_tensor)."""
    _gather_single(out, x, group=group)


_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def all_reduce(x: torch.Tensor, site: str = "") -> torch.Tensor:
    """Sum x over the tensor-parallel group; may return a new tensor (use the return value).

    Args:
        x: the local partial, [..., H].
        site: a stable name of the reduction point (e.g. "layers.3.attn"), keys the calibration.
    """
    st = get_tp()
    if _observer is not None:
        _observer(site, x)
    if not st.enabled:
        return x
    nbytes = x.numel() * x.element_size()
    q = _quant
    if q is not None and nbytes >= q.min_bytes(x.device):
        stats["quant_calls"] += 1
        stats["quant_bytes"] += nbytes
        return q(x, site)
    stats["plain_calls"] += 1
    stats["plain_bytes"] += nbytes
    dist.all_reduce(x, group=st.group)
    return x


def all_reduce_plain(x: torch.Tensor) -> torch.Tensor:
    """Exact sum over the group (used where low-bit error would not be acceptable, e.g. embeddings)."""
    st = get_tp()
    if st.enabled:
        dist.all_reduce(x, group=st.group)
    return x


def all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's x along `dim` (rank order)."""
    st = get_tp()
    if not st.enabled:
        return x
    out = torch.empty(st.world_size * x.numel(), dtype=x.dtype, device=x.device)
    gather_into(out, x.contiguous().view(-1), group=st.group)
    return torch.cat(out.view(st.world_size, *x.shape).unbind(0), dim=dim)


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank src's x on every rank (in place)."""
    st = get_tp()
    if st.enabled:
        dist.broadcast(x, src=src, group=st.group)
    return x


def barrier() -> None:
    """Wait for every rank of the group."""
    st = get_tp()
    if st.enabled:
        dist.barrier(group=st.group)
