"""Causal prefill attention on one GPU: SDPA (cuDNN, flash) vs FlashAttention-4 (CuTe DSL), if installed.

For each shape [B, S, Hq, Hk, D] (bf16, causal, GQA): time (median of CUDA-event timings over three
rotating input sets, after warm-up), TFLOPS (causal: 2 * B * Hq * S^2 * D), and the relative error of
each kernel's output against an fp32 reference on the first rows (one head group, so the reference fits).
Writes $OUT/attn_bench.json and prints a table. Issue #6 (8k prefill).

    python scripts/gpu/attn_bench.py [--shapes 1,8192,32,8,64 ...] [--reps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from llm.kernels import cute_prefill as cp  # noqa: E402


def sdpa(q, k, v, backend):
    # q/k/v [B, S, H, D] -> [B, S, H, D], the engine's layout: its reference path, one SDPA backend forced
    with sdpa_kernel([backend]):
        return cp.attention_ref(q, k, v, q.shape[-1] ** -0.5)


def fa4(q, k, v):
    # the op the engine calls (llm/kernels/cute_prefill.py)
    return cp.fa4_causal_attention(q, k, v, q.shape[-1] ** -0.5)


def reference(q, k, v, rows: int):
    # fp32 causal attention for the last `rows` query positions of batch 0
    b, s, hq, d = q.shape
    rep = hq // k.shape[2]
    qf = q[0, s - rows:].float().transpose(0, 1)  # [H, R, D]
    kf = k[0].float().repeat_interleave(rep, dim=1).transpose(0, 1)  # [H, S, D]
    vf = v[0].float().repeat_interleave(rep, dim=1).transpose(0, 1)
    sc = qf @ kf.transpose(1, 2) / d ** 0.5
    pos = torch.arange(s - rows, s, device=q.device)[:, None]
    sc = sc.masked_fill(torch.arange(s, device=q.device)[None] > pos, float("-inf"))
    return (torch.softmax(sc, -1) @ vf).transpose(0, 1)  # [R, H, D]


def time_it(fn, sets, reps: int) -> float:
    for i in range(3):
        fn(*sets[i % len(sets)])
    torch.cuda.synchronize()
    ts = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(*sets[i % len(sets)])
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["1,8192,32,8,64", "1,1024,32,8,64", "1,8192,32,8,128",
                                                    "1,2048,32,8,128"])
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    kernels = {"sdpa_cudnn": lambda q, k, v: sdpa(q, k, v, SDPBackend.CUDNN_ATTENTION),
               "sdpa_flash": lambda q, k, v: sdpa(q, k, v, SDPBackend.FLASH_ATTENTION)}
    st = cp.status("cuda")
    if st["attention"] == "fa4":
        kernels["fa4"] = fa4
    else:
        print("no FlashAttention-4:", st["attention"])
    rows = []
    for spec in a.shapes:
        b, s, hq, hk, d = (int(x) for x in spec.split(","))
        g = torch.Generator(device="cuda").manual_seed(s + d)
        sets = [tuple(torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, generator=g)
                      for h in (hq, hk, hk)) for _ in range(3)]
        ref = reference(*sets[0], rows=256)
        flops = 2 * b * hq * s * s * d  # causal: half of 4 * S^2 * D per head
        for name, fn in kernels.items():
            row = {"shape": spec, "kernel": name}
            try:
                y = fn(*sets[0])
                torch.cuda.synchronize()
                got = y[0, s - 256:].float()
                row["rel_err"] = float((got - ref).norm() / ref.norm())
                row["ms"] = time_it(fn, sets, a.reps)
                row["tflops"] = flops / row["ms"] / 1e9
            except Exception as e:  # report and go on: one failing kernel must not hide the others
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "attn_bench.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"\n{'shape':<18} {'kernel':<12} {'ms':>8} {'TFLOPS':>8} {'rel err':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['shape']:<18} {r['kernel']:<12} {r['error'][:60]}")
        else:
            print(f"{r['shape']:<18} {r['kernel']:<12} {r['ms']:8.3f} {r['tflops']:8.1f} {r['rel_err']:9.2e}")


if __name__ == "__main__":
    main()
