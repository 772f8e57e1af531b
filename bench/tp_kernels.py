"""Single-GPU microbenchmark of the quantized all-reduce kernels: quantize+pack and dequant+sum.

    python3 bench/tp_kernels.py --out runs/tp_kernels.json          # one CUDA GPU, ~1-2 min
    SMOKE=1 python3 bench/tp_kernels.py --device cpu --out /tmp/k.json   # CPU, torch references
    SMOKE=1 TRITON_INTERPRET=1 python3 bench/tp_kernels.py --device cpu --out /tmp/k.json  # interpreted

Messages of [N, 4096] bf16 rows, 8 KB .. 128 MB, H/64 outlier channels, groups of 128. For each size
and kernel: GPU time (CUDA events around a CUDA graph of `reps` launches: no host overhead), eager
time per call (events around one launch from Python: what the comm path pays when launch-bound), and
achieved bandwidth = bytes the kernel must move / GPU time, against a measured torch copy (read + write)
on the same GPU. Kernels: quantize (no error feedback), quantize_ef (reads and writes the error buffer
too), dequant_sum of W = 2 messages. The groups-per-program / warps configuration is swept first at
32 MB and 128 MB and the fastest one is used for the size sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from llm.kernels import dequant_sum as ds
from llm.kernels import quantize_pack as qp

H, G, W = 4096, 128, 2
K = H // 64


if qp.triton is not None:
    import triton
    import triton.language as tl

    @triton.jit
    def _pair_copy_kernel(x_ptr, x32_ptr, o_ptr, o32_ptr, H, stride, NG, GROUP: tl.constexpr,
                          BLOCK_G: tl.constexpr):
        # the kernels' tiling and paired loads / stores, nothing else: their bandwidth ceiling
        row = tl.program_id(0).to(tl.int64)
        half: tl.constexpr = GROUP // 2
        g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
        j = g[:, None] * half + tl.arange(0, half)[None, :]
        m0 = (2 * j < H) & (g[:, None] < NG)
        a, b = qp.load_pairs(x_ptr, x32_ptr, row * stride, j, m0, m0, True)
        qp.store_pairs(o_ptr, o32_ptr, row * stride, j, a, b, m0, m0, True)


def _pair_copy(x: torch.Tensor, out: torch.Tensor, block_g: int, warps: int) -> None:
    n, h = x.shape
    ng = h // G
    _pair_copy_kernel[(n, triton.cdiv(ng, block_g))](x, x.view(torch.int32), out, out.view(torch.int32), h,
                                                      x.stride(0) // 2, ng, GROUP=G, BLOCK_G=block_g,
                                                      num_warps=warps)


def gpu_time(fn, reps: int, iters: int) -> float:
    """Median seconds per call of fn, from CUDA events around a graph of `reps` calls."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3 / reps)
    return statistics.median(ts)


def eager_time(fn, iters: int, dev: torch.device) -> float:
    """Median seconds of one call issued from Python (events on GPU, wall clock on CPU)."""
    for _ in range(3):
        fn()
    ts = []
    for _ in range(iters):
        if dev.type == "cuda":
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def setup(nbytes: int, dev: torch.device):
    n = max(1, nbytes // (2 * H))
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(n, H, device=dev, dtype=torch.bfloat16, generator=g)
    idx = torch.randperm(H, device=dev, generator=g)[:K].sort().values.to(torch.int32)
    x[:, idx.long()] *= 30
    slots = qp.slot_map(idx, H)
    lay = qp.layout(n, H, G, K)
    bufs = torch.empty(W, lay.total, dtype=torch.uint8, device=dev)
    err = torch.zeros_like(x)
    out = torch.empty_like(x)
    return n, x, idx, slots, lay, bufs, err, out


def kernels(dev: torch.device, nbytes: int, block_g: int, warps: int, variants: bool = False) -> dict:
    """name -> (callable, bytes it must move) for one message size."""
    n, x, idx, slots, lay, bufs, err, out = setup(nbytes, dev)
    payload = lay.total
    if dev.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter: smoke tests
        qp.quantize_pack(x, idx, slots, G, out=bufs[1], block_g=block_g, num_warps=warps)
        if variants:  # what the kernels' time is made of: a copy with the same tiling, no outliers, division
            none = idx[:0]
            b0 = torch.empty(qp.layout(n, H, G, 0).total, dtype=torch.uint8, device=dev)
            return {
                "pair_copy": (lambda: _pair_copy(x, out, block_g, warps), 4 * x.numel()),
                "quantize_no_outliers": (lambda: qp.quantize_pack(x, none, slots, G, out=b0, block_g=block_g,
                                                                  num_warps=warps), 2 * x.numel() + payload),
                "quantize_exact_div": (lambda: qp.quantize_pack(x, idx, slots, G, out=bufs[0], block_g=block_g,
                                                                num_warps=warps, exact_div=True),
                                       2 * x.numel() + payload),
            }
        return {
            "quantize": (lambda: qp.quantize_pack(x, idx, slots, G, out=bufs[0], block_g=block_g,
                                                  num_warps=warps), 2 * x.numel() + payload),
            "quantize_ef": (lambda: qp.quantize_pack(x, idx, slots, G, out=bufs[0], block_g=block_g, err=err,
                                                     num_warps=warps), 6 * x.numel() + payload),
            "dequant_sum": (lambda: ds.dequant_sum(bufs, lay, idx, slots, out=out, block_g=block_g,
                                                   num_warps=warps), W * payload + 2 * x.numel()),
        }
    if variants:
        return {}
    il = idx.long()
    qp.quantize_pack_ref(x, il, G, out=bufs[1])
    return {"quantize": (lambda: qp.quantize_pack_ref(x, il, G, out=bufs[0]), 2 * x.numel() + payload),
            "quantize_ef": (lambda: qp.quantize_pack_ref(x, il, G, out=bufs[0], err=err), 6 * x.numel() + payload),
            "dequant_sum": (lambda: ds.dequant_sum_ref(bufs, lay, il, torch.bfloat16), W * payload + 2 * x.numel())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--iters", type=int, default=25)
    a = ap.parse_args()
    smoke = os.environ.get("SMOKE") == "1"
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    iters = 3 if smoke else a.iters
    res: dict = {"device": torch.cuda.get_device_name(dev) if cuda else "cpu", "torch": torch.__version__,
                 "hidden": H, "group": G, "outliers": K, "world": W, "iters": iters, "smoke": smoke,
                 "bits_per_value": qp.layout(1, H, G, K).bits_per_value}
    if cuda:
        import triton
        res["triton"] = triton.__version__
        big = torch.empty(64 << 20, dtype=torch.bfloat16, device=dev)  # 128 MB
        dst = torch.empty_like(big)
        res["copy_gbps"] = 2 * big.numel() * 2 / gpu_time(lambda: dst.copy_(big), 5, iters) / 1e9
        del big, dst
        print(f"torch copy: {res['copy_gbps']:.0f} GB/s (read + write)", flush=True)
    # configuration sweep
    best = (4, 2)
    if cuda and not smoke:
        sweep = []
        for block_g in (2, 4, 8, 16):
            for warps in (1, 2, 4, 8):
                if block_g * G // 2 < 32 * warps:  # fewer pairs than threads: lanes would repeat work
                    continue
                row = {"block_g": block_g, "warps": warps}
                for nbytes in (32 << 20, 128 << 20):
                    for name, (fn, _) in kernels(dev, nbytes, block_g, warps).items():
                        row[f"{name}_{nbytes >> 20}mb_us"] = gpu_time(fn, 5, 7) * 1e6
                sweep.append(row)
                print(json.dumps(row), flush=True)
        res["sweep"] = sweep
        score = {(r["block_g"], r["warps"]): sum(v for k, v in r.items() if k.endswith("_us")) for r in sweep}
        best = min(score, key=score.get)
        _save(a.out, res)
    res["block_g"], res["num_warps"] = best
    print(f"config: block_g {best[0]}, num_warps {best[1]}", flush=True)
    rows = []
    nbytes = 8 << 10
    top = (256 << 10) if smoke else (128 << 20)
    while nbytes <= top:
        row = {"bytes": nbytes}
        todo = dict(kernels(dev, nbytes, *best))
        if nbytes >= ((64 << 10) if smoke else (1 << 20)):
            todo.update(kernels(dev, nbytes, *best, variants=True))
        for name, (fn, moved) in todo.items():
            row[f"{name}_eager_us"] = eager_time(fn, iters, dev) * 1e6
            if cuda:
                t = gpu_time(fn, 20 if nbytes <= (8 << 20) else 3, iters)
                row[f"{name}_gpu_us"] = t * 1e6
                row[f"{name}_gbps"] = moved / t / 1e9
                row[f"{name}_frac_of_copy"] = row[f"{name}_gbps"] / res["copy_gbps"]
        rows.append(row)
        cols = "  ".join(f"{k[:-3] if k.endswith('_us') else k} {v:8.1f}" for k, v in row.items()
                         if k != "bytes" and not k.endswith("frac_of_copy"))
        print(f"{nbytes / 2**20:9.3f} MB  {cols}", flush=True)
        res["rows"] = rows
        _save(a.out, res)
        nbytes *= 2
    _table(res)


def _save(path: str, res: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)


def _table(res: dict) -> None:
    """Markdown table of the size sweep (GPU us, GB/s, fraction of copy bandwidth; eager us)."""
    print(f"\n{res['device']}, copy {res.get('copy_gbps', 0):.0f} GB/s, block_g {res['block_g']}, "
          f"warps {res['num_warps']}\n")
    print("| message | quantize us (GB/s, % copy) | +error feedback | dequant+sum W=2 | eager q / q+ef / dq us |")
    print("|---|---|---|---|---|")
    for r in res["rows"]:
        def cell(k: str, r=r) -> str:
            if f"{k}_gpu_us" not in r:
                return "-"
            return f"{r[k + '_gpu_us']:.1f} ({r[k + '_gbps']:.0f}, {r[k + '_frac_of_copy']:.0%})"
        print(f"| {r['bytes'] / 2**20:.3g} MB | {cell('quantize')} | {cell('quantize_ef')} | {cell('dequant_sum')} | "
              f"{r['quantize_eager_us']:.0f} / {r['quantize_ef_eager_us']:.0f} / {r['dequant_sum_eager_us']:.0f} |")
    print("\n| message | pair copy (same tiling) | quantize, no outliers | quantize, IEEE division per value |")
    print("|---|---|---|---|")
    for r in res["rows"]:
        if "pair_copy_gpu_us" in r:
            print(f"| {r['bytes'] / 2**20:.3g} MB | " + " | ".join(
                f"{r[k + '_gpu_us']:.1f} us ({r[k + '_gbps']:.0f} GB/s)"
                for k in ("pair_copy", "quantize_no_outliers", "quantize_exact_div")) + " |")


if __name__ == "__main__":
    main()
