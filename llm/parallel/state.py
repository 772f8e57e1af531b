"""Process-group state for tensor parallelism: one place that knows the group, rank and world size.

`init_tp()` reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
so the same code runs on one node or many; `init_tp(rank=..., world_size=..., init_method=...)`
sets it up explicitly (tests spawn processes this way). Backend: NCCL when the device is CUDA,
gloo on CPU. With world size 1 nothing is initialised and every collective is a no-op.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class TPState:
    """The tensor-parallel group this process belongs to."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    group: dist.ProcessGroup | None = None
    owns_default_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_STATE = TPState()


def get_tp() -> TPState:
    """The current tensor-parallel state (world size 1 until `init_tp` ran)."""
    return _STATE


def init_tp(rank: int | None = None, world_size: int | None = None, init_method: str | None = None,
            device: str | torch.device | None = None, backend: str | None = None,
            timeout_s: float = 300.0) -> TPState:
    """Join (or create) the tensor-parallel process group.

    Args:
        rank, world_size: explicit values; default from torchrun's RANK / WORLD_SIZE (else 0 / 1).
        init_method: e.g. "tcp://127.0.0.1:29500" or "file:///tmp/x"; default "env://".
        device: "cuda" (one GPU per rank, chosen by LOCAL_RANK) or "cpu"; default cuda if available.
        backend: default nccl on CUDA, gloo on CPU.
        timeout_s: how long a collective may wait for a dead peer before raising (never hang forever).
    """
    global _STATE
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    if world_size <= 1:
        _STATE = TPState(device=device)
        return _STATE
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    owns = False
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, init_method=init_method or "env://", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout_s), **kwargs)
        owns = True
    _STATE = TPState(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                     group=dist.group.WORLD, owns_default_group=owns)
    log.info("tensor parallel: rank %d/%d on %s (%s)", rank, world_size, device, backend)
    return _STATE


def destroy_tp() -> None:
    """Leave the group (if we created it) and go back to world size 1."""
    global _STATE
    if _STATE.owns_default_group and dist.is_initialized():
        dist.destroy_process_group()
    _STATE = TPState()
