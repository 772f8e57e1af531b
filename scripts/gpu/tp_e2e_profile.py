"""Issue #7: where does the end-to-end prefill time go with NCCL bf16 vs the quantized p2p all-reduce?

The comm bench makes the p2p reduction ~2.5x faster than NCCL in isolation (64 MB: ~100 vs ~250 us), which
should take ~9.6 ms off an 8k-token prefill of the 8B shape at TP=2 (64 reductions), but bench/tp_e2e.py
saw no gain (-0.5% .. +2.4%). This runs the same model and modes and, per prompt length and mode, prints
the wall time of a forward, the host time to issue it (no sync: equal to the wall time when the host is the
bottleneck), and the GPU kernel time of one profiled forward by kind (GEMM, attention, NCCL, quantize,
dequant, barrier, other) on rank 0.

    torchrun --standalone --nproc-per-node 2 scripts/gpu/tp_e2e_profile.py --out $OUT/e2e_profile.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from tp_e2e import SHAPES, build  # noqa: E402

from llm.parallel import comm, p2p  # noqa: E402
from llm.parallel.quant_comm import Calibration, QuantAllReduce, QuantCommConfig  # noqa: E402
from llm.parallel.state import init_tp  # noqa: E402
from llm.parallel.tp import reduction_sites  # noqa: E402

KINDS = (("nccl", r"nccl"), ("quantize", r"quantize_pack"), ("dequant", r"dequant_sum"),
         ("barrier", r"barrier|signal"), ("attention", r"flash|fmha|attention|sdpa|softmax"),
         ("gemm", r"gemm|xmma|cutlass|nvjet|sm90|cublas"))


def kind(name: str) -> str:
    low = name.lower()
    return next((k for k, pat in KINDS if re.search(pat, low)), "other")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", default="2048,8192")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    st = init_tp(device="cuda")
    dev, w = st.device, st.world_size
    shape = dict(SHAPES["8b"])
    model = build(shape, dev, torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    cal = Calibration({s: torch.rand(w, shape["dim"], generator=g) for s in reduction_sites(model)}, tp=w)
    modes = {"nccl_bf16": None}
    if p2p.available(None, dev):
        modes["quant_p2p"] = QuantAllReduce(QuantCommConfig(min_bytes=1 << 20, transport="p2p"), cal)
    modes["quant_one_shot"] = QuantAllReduce(QuantCommConfig(min_bytes=1 << 20, transport="nccl"), cal)
    res = {}
    with torch.inference_mode():
        for s in (int(v) for v in a.prompts.split(",")):
            model.setup_caches(1, s + 8)
            tokens = torch.randint(0, shape["vocab_size"], (1, s), generator=g).to(dev)
            pos = torch.arange(s, device=dev)[None]

            def fwd(tokens=tokens, pos=pos):
                return model(tokens, pos, fresh=True, last_only=True)

            for name, q in modes.items():
                comm.set_quantizer(q)
                for _ in range(2):
                    fwd()
                walls, issues = [], []
                for _ in range(5):
                    dist.barrier()
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    fwd()
                    t1 = time.perf_counter()
                    torch.cuda.synchronize()
                    walls.append(time.perf_counter() - t0)
                    issues.append(t1 - t0)
                dist.barrier()
                torch.cuda.synchronize()
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    fwd()
                    torch.cuda.synchronize()
                by_kind: dict[str, float] = {}
                for e in prof.key_averages():
                    t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
                    if t and e.key and not e.key.startswith("ProfilerStep"):
                        by_kind[kind(e.key)] = by_kind.get(kind(e.key), 0.0) + t / 1e3
                top = sorted(((getattr(e, "device_time_total", 0) / 1e3, e.key[:60]) for e in prof.key_averages()),
                             reverse=True)[:8]
                row = {"wall_ms": statistics.median(walls) * 1e3, "issue_ms": statistics.median(issues) * 1e3,
                       "gpu_ms": {k: round(v, 2) for k, v in sorted(by_kind.items())},
                       "gpu_total_ms": round(sum(by_kind.values()), 2), "top": top}
                res.setdefault(str(s), {})[name] = row
                if st.rank == 0:
                    print(f"{s:5d} {name:15s} wall {row['wall_ms']:7.2f} ms  issue {row['issue_ms']:7.2f} ms  "
                          f"gpu {row['gpu_total_ms']:7.2f} ms  {row['gpu_ms']}", flush=True)
                    for t, k in top:
                        print(f"        {t:8.2f} ms  {k}", flush=True)
    comm.set_quantizer(None)
    if st.rank == 0:
        Path(a.out).write_text(json.dumps(res, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
