"""Single-GPU microbenchmark of the quantized all-reduce kernels: quantize+pack and dequant+sum.

    python3 bench/tp_kernels.py --out runs/tp_kernels.json          # one CUDA GPU, ~1-2 min
    SMOKE=1 python3 bench/tp_kernels.py --device cpu --out /tmp/k.json   # CPU, torch references
    SMOKE=1 TRITON_INTERPRET=1 python3 bench/tp_kernels.py --device cpu --out /tmp/k.json  # interpreted
    python3 bench/tp_kernels.py --sass 90 [--tile 1,32,4]   # no GPU: compile for sm_90, count SASS ops

Messages of [N, 4096] bf16 rows, 8 KB .. 128 MB, H/64 outlier channels, groups of 128. For each size
and kernel: GPU time (CUDA events around a CUDA graph of `reps` launches: no host overhead), eager
time per call (events around one launch from Python: what the comm path pays when launch-bound), and
achieved bandwidth = bytes the kernel must move / GPU time, against a measured torch copy (read + write)
on the same GPU. Kernels: quantize (no error feedback), quantize_ef (reads and writes the error buffer
too), dequant_sum of W = 2 messages, and `local` = quantize_ef + dequant_sum into the input (the kernel
part of one one-shot all-reduce: its eager column is the host cost of the two launches). The tile
(rows x groups per program) and warps are swept per kernel first at 32 MB and 128 MB (`CONFIGS`), and
each kernel's fastest one is used for the size sweep (`--no-sweep`: the library defaults).
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
    def _pair_copy_kernel(x_ptr, o_ptr, N, PB, NG, stride, stride_w, GROUP: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_G: tl.constexpr):
        # the kernels' tiling and paired loads / stores, nothing else: their bandwidth ceiling
        r, g, j, ok, m0, m1 = qp.tile(N, PB, PB, NG, GROUP, BLOCK_R, BLOCK_G, True)
        r64 = r.to(tl.int64)[:, None]
        a, b = qp.load_pairs(x_ptr, r64 * stride, r64 * stride_w, j, m0, m1, True)
        qp.store_pairs(o_ptr, r64 * stride, r64 * stride_w, j, a, b, m0, m1, True, qp.INTERPRET)


def _pair_copy(x: torch.Tensor, out: torch.Tensor, cfg: tuple[int, int, int]) -> None:
    n, h = x.shape
    ng = h // G
    br, bg = qp.tile_shape(n, ng, cfg[1], cfg[0])
    _pair_copy_kernel[(triton.cdiv(n, br), triton.cdiv(ng, bg))](x, out, n, h // 2, ng, x.stride(0),
                                                                 x.stride(0) // 2, GROUP=G, BLOCK_R=br,
                                                                 BLOCK_G=bg, num_warps=cfg[2])


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
    keep = qp.keep_map(idx, H)
    lay = qp.layout(n, H, G, K)
    bufs = torch.empty(W, lay.total, dtype=torch.uint8, device=dev)
    err = torch.zeros_like(x)
    out = torch.empty_like(x)
    return n, x, idx, keep, lay, bufs, err, out


def tile_kw(c: tuple) -> dict:
    """The kernels' tile options of one config (block_r, block_g, warps)."""
    return dict(block_r=c[0], block_g=c[1], num_warps=c[2])


def kernels(dev: torch.device, nbytes: int, cfg: dict, variants: bool = False) -> dict:
    """name -> (callable, bytes it must move) for one message size; cfg: kernel -> (block_r, block_g, warps)."""
    n, x, idx, keep, lay, bufs, err, out = setup(nbytes, dev)
    payload = lay.total
    if dev.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter: smoke tests

        def q(c, **kw):
            return lambda: qp.quantize_pack(x, idx, keep, G, out=bufs[0], **tile_kw(c), **kw)

        cq, ce, cd = cfg["quantize"], cfg["quantize_ef"], cfg["dequant_sum"]
        q(cq)()
        qp.quantize_pack(x, idx, keep, G, out=bufs[1], **tile_kw(cq))
        if variants:  # what the kernels' time is made of: a copy with the same tiling, no outliers, division
            none = idx[:0]
            b0 = torch.empty(qp.layout(n, H, G, 0).total, dtype=torch.uint8, device=dev)
            return {
                "pair_copy": (lambda: _pair_copy(x, out, cq), 4 * x.numel()),
                "quantize_no_outliers": (lambda: qp.quantize_pack(x, none, keep, G, out=b0, **tile_kw(cq)),
                                         2 * x.numel() + payload),
                "quantize_exact_div": (q(cq, exact_div=True), 2 * x.numel() + payload),
            }

        def local():  # the kernels of one one-shot all-reduce of 2 ranks, the sum written in place
            qp.quantize_pack(x, idx, keep, G, out=bufs[0], err=err, **tile_kw(ce))
            ds.dequant_sum(bufs, lay, idx, out=x, **tile_kw(cd))

        return {
            "quantize": (q(cq), 2 * x.numel() + payload),
            "quantize_ef": (q(ce, err=err), 6 * x.numel() + payload),
            "dequant_sum": (lambda: ds.dequant_sum(bufs, lay, idx, out=out, **tile_kw(cd)), W * payload + 2 * x.numel()),
            "local": (local, 6 * x.numel() + payload + W * payload + 2 * x.numel()),
        }
    if variants:
        return {}
    il = idx.long()
    qp.quantize_pack_ref(x, il, G, out=bufs[1])
    return {"quantize": (lambda: qp.quantize_pack_ref(x, il, G, out=bufs[0]), 2 * x.numel() + payload),
            "quantize_ef": (lambda: qp.quantize_pack_ref(x, il, G, out=bufs[0], err=err), 6 * x.numel() + payload),
            "dequant_sum": (lambda: ds.dequant_sum_ref(bufs, lay, il, torch.bfloat16), W * payload + 2 * x.numel())}


# (block_r, block_g, num_warps); block_g 32 = whole rows of 4096 channels
CONFIGS = [(1, 32, 4), (1, 32, 8), (2, 32, 4), (2, 32, 8), (4, 32, 8), (1, 16, 2), (1, 16, 4), (2, 16, 4),
           (1, 8, 2), (4, 8, 4), (8, 4, 4), (4, 4, 2)]
NAMES = ("quantize", "quantize_ef", "dequant_sum")


def sass(arch: int, tile: tuple) -> None:
    """Compile the three kernels for sm_`arch` without a GPU (Triton's bundled ptxas / nvdisasm) and print,
    per kernel, the SASS instruction mix, the vector width of the global loads / stores and the register
    layout conversions: what decides whether a kernel can reach bandwidth, checked before a GPU run."""
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from llm.kernels import launch

    calls = []
    launch.Launcher.__call__ = lambda self, key, grid, args, num_warps: calls.append((self.kernel, args, num_warps))
    n = 64
    _, x, idx, keep, lay, bufs, err, _ = setup(n * 2 * H, torch.device("cpu"))
    kw = dict(block_r=tile[0], block_g=tile[1], num_warps=tile[2])
    qp.quantize_pack(x, idx, keep, G, out=bufs[0], **kw)
    qp.quantize_pack(x, idx, keep, G, out=bufs[0], err=err, **kw)
    ds.dequant_sum(bufs, lay, idx, out=x, **kw)
    types = {torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.uint8: "*u8", torch.int32: "*i32"}
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    for name, (kernel, args, warps) in zip(NAMES, calls, strict=True):
        sig, consts, attrs = {}, {}, {}
        for i, (p, v) in enumerate(zip(kernel.params, args, strict=True)):
            if p.is_constexpr or (isinstance(v, int) and not isinstance(v, bool) and v == 1):
                sig[p.name], consts[p.name] = "constexpr", v  # what the JIT specializes as constants
                continue
            sig[p.name] = types[v.dtype] if isinstance(v, torch.Tensor) else "fp32" if isinstance(v, float) else "i32"
            if (v.data_ptr() if isinstance(v, torch.Tensor) else v) % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        k = triton.compile(ASTSource(kernel, sig, consts, attrs), target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": warps})
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            text = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
        ops: dict[str, int] = {}
        for op in re.findall(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", text):
            base = op.split(".")[0]
            key = op if base in ("LDG", "STG", "LDS", "STS") else base
            ops[key] = ops.get(key, 0) + 1
        mem = {k: v for k, v in sorted(ops.items()) if k[:3] in ("LDG", "STG", "LDS", "STS", "BAR")}
        top = sorted(ops.items(), key=lambda t: -t[1])[:12]
        print(f"{name}: {sum(ops.values())} instructions, {k.asm['ttgir'].count('convert_layout')} layout "
              f"conversions, {k.metadata.shared} B shared\n  memory {mem}\n  top {top}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sass", type=int, default=0, help="compile for this sm_ arch and print SASS stats (no GPU)")
    ap.add_argument("--tile", default="0,0,4", help="block_r,block_g,num_warps for --sass (0: library default)")
    ap.add_argument("--out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--no-sweep", action="store_true", help="use the library defaults, skip the config sweep")
    a = ap.parse_args()
    if a.sass:
        sass(a.sass, tuple(int(v) or None for v in a.tile.split(",")))
        return
    if not a.out:
        ap.error("--out is required")
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
    default = (None, None, qp.NUM_WARPS)
    best = {k: default for k in NAMES}
    if cuda and not smoke and not a.no_sweep:
        sweep = []
        for c in CONFIGS:
            row = {"block_r": c[0], "block_g": c[1], "warps": c[2]}
            for nbytes in (32 << 20, 128 << 20):
                todo = kernels(dev, nbytes, dict.fromkeys(NAMES, c))
                for name in NAMES:
                    row[f"{name}_{nbytes >> 20}mb_us"] = gpu_time(todo[name][0], 5, 7) * 1e6
            sweep.append(row)
            print(json.dumps(row), flush=True)
        res["sweep"] = sweep
        for name in NAMES:
            score = {(r["block_r"], r["block_g"], r["warps"]): r[f"{name}_32mb_us"] + r[f"{name}_128mb_us"] / 4
                     for r in sweep}
            best[name] = min(score, key=score.get)
        _save(a.out, res)
    res["config"] = {k: list(v) for k, v in best.items()}
    print(f"config (block_r, block_g, warps): {res['config']}", flush=True)
    rows = []
    nbytes = 8 << 10
    top = (256 << 10) if smoke else (128 << 20)
    while nbytes <= top:
        row = {"bytes": nbytes}
        todo = dict(kernels(dev, nbytes, best))
        if nbytes >= ((64 << 10) if smoke else (1 << 20)):
            todo.update(kernels(dev, nbytes, best, variants=True))
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
    print(f"\n{res['device']}, copy {res.get('copy_gbps', 0):.0f} GB/s, (block_r, block_g, warps) "
          f"{res['config']}\n")
    print("| message | quantize us (GB/s, % copy) | +error feedback | dequant+sum W=2 | q+ef, dq in place | "
          "eager q / q+ef / dq / both us |")
    print("|---|---|---|---|---|---|")
    for r in res["rows"]:
        def cell(k: str, r=r) -> str:
            if f"{k}_gpu_us" not in r:
                return "-"
            return f"{r[k + '_gpu_us']:.1f} ({r[k + '_gbps']:.0f}, {r[k + '_frac_of_copy']:.0%})"
        print(f"| {r['bytes'] / 2**20:.3g} MB | {cell('quantize')} | {cell('quantize_ef')} | {cell('dequant_sum')} | "
              f"{cell('local')} | {r['quantize_eager_us']:.0f} / {r['quantize_ef_eager_us']:.0f} / "
              f"{r['dequant_sum_eager_us']:.0f} / {r.get('local_eager_us', 0):.0f} |")
    print("\n| message | pair copy (same tiling) | quantize, no outliers | quantize, IEEE division per value |")
    print("|---|---|---|---|")
    for r in res["rows"]:
        if "pair_copy_gpu_us" in r:
            print(f"| {r['bytes'] / 2**20:.3g} MB | " + " | ".join(
                f"{r[k + '_gpu_us']:.1f} us ({r[k + '_gbps']:.0f} GB/s)"
                for k in ("pair_copy", "quantize_no_outliers", "quantize_exact_div")) + " |")


if __name__ == "__main__":
    main()
