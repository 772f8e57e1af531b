"""Tensor-parallel serving: `wakeline llm serve --tp N` over llm/parallel's serving seam.

The CLI re-executes itself under torchrun (`torch.distributed.run --nproc-per-node N`) unless it
already runs under it. Rank 0 loads its shard, makes the model broadcast each call
(`mirror.lead`) and serves gRPC with an ordinary `Engine` (CUDA graphs off: replays bypass the
mirrored forward); ranks > 0 load their shards and repeat rank 0's model calls (`mirror.follow`)
until rank 0 releases them on shutdown. Ranks wait on each other for `tp_timeout_s` (idle time
included), after which a dead peer makes the next step fail and health turn NOT_SERVING.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("wakeline.llm.tp")


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def is_follower() -> bool:
    return under_torchrun() and int(os.environ["RANK"]) > 0


def torchrun_argv(tp: int, argv: list[str]) -> list[str]:
    """The command that runs this CLI invocation as `tp` ranks on this host."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={tp}",
            "-m", "services.cli", *argv]


def _dtype(settings):
    import torch

    if settings.dtype:
        return getattr(torch, settings.dtype)
    return torch.bfloat16 if settings.device.startswith("cuda") else torch.float32


def _init(settings):
    from llm.parallel.calibrate import checkpoint_fingerprint, load_tp_model
    from llm.parallel.state import init_tp

    st = init_tp(device=settings.device.split(":")[0], timeout_s=settings.tp_timeout_s)
    if st.world_size != settings.tp:
        raise ValueError(f"--tp {settings.tp} but {st.world_size} rank(s) joined: start with "
                         f"torchrun --nproc-per-node {settings.tp} (wakeline llm serve does this itself)")
    if settings.tp_calibration is not None:
        from llm.parallel.quant_comm import configure

        configure(str(settings.tp_calibration), None, tp=settings.tp,
                  checkpoint=checkpoint_fingerprint(settings.model))
    model, tok = load_tp_model(str(settings.model), settings.device.split(":")[0], _dtype(settings))
    return st, model, tok


def run_follower(settings) -> None:
    """Ranks > 0: load this rank's shard and mirror rank 0 until it stops.

    SIGTERM/SIGINT are ignored: torchrun signals every rank at shutdown, and rank 0 must still be
    able to finish its in-flight steps (which need this rank) and then release it.
    """
    import signal

    from llm.parallel import mirror

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    st, model, _ = _init(settings)
    n = mirror.follow(model)
    log.info("rank %d done after %d forwards", st.rank, n)


def load_tp_engine(settings, engine_cls, kwargs: dict):
    """Rank 0: this rank's shard, leading the followers, inside an ordinary Engine."""
    from llm.parallel import mirror

    _, model, tok = _init(settings)
    mirror.lead(model)
    engine = engine_cls(model, tok, cuda_graphs=False, **kwargs)
    engine.tp_model = model
    return engine


def release_followers(engine) -> None:
    """Rank 0 at shutdown: let the followers' `follow()` return so that torchrun exits cleanly."""
    from llm.parallel import mirror

    mirror.stop(engine.tp_model)
