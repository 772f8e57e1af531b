"""Run a function on W local ranks (spawned processes, gloo on CPU): tests and `wakeline llm calibrate`.

On GPUs and across nodes use `torchrun` instead; `init_tp()` then reads its environment.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import traceback

import torch.multiprocessing as mp


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world_size: int, init_method: str, device: str, args: tuple, q) -> None:
    from llm.parallel.state import destroy_tp, init_tp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
        init_tp(rank=rank, world_size=world_size, init_method=init_method, device=device, timeout_s=120)
        res = fn(rank, world_size, *args)
        # plain pickle: tensors by value, not as shared-memory handles that die with this process
        q.put((rank, "ok", pickle.dumps(res)))
    except BaseException:  # report every failure to the parent instead of hanging it
        q.put((rank, "error", traceback.format_exc()))
    finally:
        destroy_tp()


def run_ranks(fn, world_size: int, *args, device: str = "cpu", timeout_s: float = 300.0) -> list:
    """Call fn(rank, world_size, *args) on `world_size` spawned ranks; return their results by rank.

    fn must be importable (module level) and its result picklable. A rank's exception is re-raised
    here as RuntimeError with its traceback.
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        init_method = f"file://{os.path.join(d, 'rdv')}"
        procs = [ctx.Process(target=_entry, args=(r, fn, world_size, init_method, device, args, q))
                 for r in range(world_size)]
        for p in procs:
            p.start()
        results: dict[int, object] = {}
        errors = []
        try:
            for _ in range(world_size):
                rank, status, res = q.get(timeout=timeout_s)
                if status == "error":
                    errors.append(f"rank {rank}:\n{res}")
                    break
                results[rank] = pickle.loads(res)
        finally:
            for p in procs:
                p.join(timeout=5 if errors else 30)
                if p.is_alive():
                    p.kill()
        if errors:
            raise RuntimeError("\n".join(errors))
    return [results[r] for r in range(world_size)]
