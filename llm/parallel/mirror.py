"""Serving with tensor parallelism: rank 0 runs the engine, the other ranks mirror its model calls.

The scheduler, sampler and I/O live on rank 0 only. `lead(model)` wraps the model on rank 0 so that
every `setup_caches(...)` and `forward(...)` first broadcasts a small header and its input tensors;
`follow(model)` on every other rank loops on those broadcasts and makes the same call, so all ranks
enter the same collectives in the same order. `stop(model)` on rank 0 ends the followers' loops.

A dead rank makes the next collective fail after the group's timeout (`init_tp(timeout_s=...)`):
the error propagates out of `engine.step()` on rank 0 and out of `follow()` elsewhere, never a hang.
CUDA-graph replays bypass `forward`, so a TP engine must run with `cuda_graphs=False`.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from llm.parallel.state import get_tp

log = logging.getLogger(__name__)

_STOP, _FORWARD, _SETUP = 0, 1, 2
_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
_HDR = 10


def _bcast(t: torch.Tensor) -> torch.Tensor:
    dist.broadcast(t, src=0, group=get_tp().group)
    return t


def _send_header(vals: list[int], device) -> None:
    h = torch.zeros(_HDR, dtype=torch.int64, device=device)
    h[: len(vals)] = torch.tensor(vals, dtype=torch.int64)
    _bcast(h)


def lead(model) -> None:
    """On rank 0: make the model broadcast each setup_caches/forward call to the followers."""
    st = get_tp()
    if not st.enabled:
        return
    fwd, setup = model.forward, model.setup_caches

    def setup_caches(max_batch: int, max_seq: int, dtype: torch.dtype | None = None) -> None:
        code = _DTYPES.index(dtype) if dtype is not None else -1
        _send_header([_SETUP, max_batch, max_seq, code], model.device)
        setup(max_batch, max_seq, dtype)

    def forward(tokens, input_pos, slots=None, kv_len=None, fresh=False, last_only=False):
        B, S = tokens.shape
        _send_header([_FORWARD, B, S, -1 if kv_len is None else int(kv_len), int(fresh), int(last_only),
                      int(slots is not None)], model.device)
        _bcast(tokens.to(torch.int64).contiguous())
        _bcast(input_pos.to(torch.int64).contiguous())
        if slots is not None:
            _bcast(slots.to(torch.int64).contiguous())
        return fwd(tokens, input_pos, slots, kv_len=kv_len, fresh=fresh, last_only=last_only)

    model.forward, model.setup_caches = forward, setup_caches
    model._tp_unwrap = (fwd, setup)


def stop(model) -> None:
    """On rank 0: release the followers (their `follow()` returns) and unwrap the model."""
    st = get_tp()
    if not st.enabled:
        return
    _send_header([_STOP], model.device)
    if hasattr(model, "_tp_unwrap"):
        model.forward, model.setup_caches = model._tp_unwrap
        del model._tp_unwrap


@torch.inference_mode()
def follow(model) -> int:
    """On ranks > 0: repeat rank 0's model calls until it stops; returns the number of forwards."""
    dev = model.device
    n = 0
    while True:
        h = _bcast(torch.zeros(_HDR, dtype=torch.int64, device=dev)).tolist()
        op = h[0]
        if op == _STOP:
            log.info("follower: rank 0 stopped after %d forwards", n)
            return n
        if op == _SETUP:
            model.setup_caches(h[1], h[2], None if h[3] < 0 else _DTYPES[h[3]])
            continue
        if op != _FORWARD:
            raise RuntimeError(f"follower: unknown op {op} from rank 0")
        B, S, kv_len, fresh, last_only, has_slots = h[1:7]
        tokens = _bcast(torch.empty(B, S, dtype=torch.int64, device=dev))
        pos = _bcast(torch.empty(B, S, dtype=torch.int64, device=dev))
        slots = _bcast(torch.empty(B, dtype=torch.int64, device=dev)) if has_slots else None
        model(tokens, pos, slots, kv_len=None if kv_len < 0 else kv_len, fresh=bool(fresh),
              last_only=bool(last_only))
        n += 1
