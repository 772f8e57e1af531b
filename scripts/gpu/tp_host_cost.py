"""Issue #7: host (Python + launch) cost per call of the all-reduce paths, the part that bounds an eager
TP prefill at short prompts (scripts/gpu/tp_e2e_profile.py: ~0.2 ms per quantized reduction at 2k).
Per path and message size: microseconds per call to issue N back-to-back calls without a sync (the GPU
keeps up at 1 MB, so this is the host's rate), then a cProfile of the p2p path's calls on rank 0.

    torchrun --standalone --nproc-per-node 2 scripts/gpu/tp_host_cost.py
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from tp_comm import fake_calibration  # noqa: E402

from llm.parallel import comm, p2p  # noqa: E402
from llm.parallel.quant_comm import QuantAllReduce, QuantCommConfig  # noqa: E402
from llm.parallel.state import init_tp  # noqa: E402

H = 4096
N_CALLS = 200


def issue_us(fn, n: int) -> float:
    torch.cuda.synchronize()
    dist.barrier()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t
    torch.cuda.synchronize()
    return dt / n * 1e6


def main() -> None:
    st = init_tp(device="cuda")
    dev, w = st.device, st.world_size
    cal = fake_calibration(w)
    paths = {"one_shot": QuantAllReduce(QuantCommConfig(min_bytes=0, transport="nccl"), cal)}
    if p2p.available(None, dev):
        paths["p2p"] = QuantAllReduce(QuantCommConfig(min_bytes=0, transport="p2p"), cal)
    for mb in (1, 16):
        x = torch.randn(mb * (1 << 20) // (2 * H), H, device=dev, dtype=torch.bfloat16)
        row = {"nccl_bf16": issue_us(lambda x=x: dist.all_reduce(x), N_CALLS)}
        comm.set_quantizer(None)
        for name, q in paths.items():
            q(x, "bench")
            row[name] = issue_us(lambda x=x, q=q: q(x, "bench"), N_CALLS)
        if st.rank == 0:
            print(f"{mb:3d} MB  host us per call: " + "  ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
    if "p2p" in paths:
        q, x = paths["p2p"], torch.randn(256, H, device=dev, dtype=torch.bfloat16)
        q(x, "bench")
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(N_CALLS):
            q(x, "bench")
        prof.disable()
        torch.cuda.synchronize()
        if st.rank == 0:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(22)
            print(out.getvalue(), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
