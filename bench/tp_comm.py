"""All-reduce latency vs message size: NCCL bf16 vs the quantized all-reduce (kernels included).

Run on >= 2 GPUs:  torchrun --nproc-per-node 2 bench/tp_comm.py --out runs/tp_comm.json [--tag nvlink]
(NCCL_P2P_DISABLE=1 in the environment gives the PCIe-like path; the tag only labels the JSON).
CPU smoke test:    SMOKE=1 torchrun --nproc-per-node 2 bench/tp_comm.py --device cpu --out /tmp/c.json

Rows of [N, 4096] bf16 (8 KB per row), 8 KB .. 128 MB. Each point: median of CUDA-event timings
of `iters` calls after warm-up, max over ranks. Quantized paths: one-shot (the default config, with
error feedback: every call reads and writes the error buffer, as inside a forward pass), one-shot
pipelined over 4 row chunks (`chunks=4`, from 64 MB), two-shot. Also the parts of the one-shot path
alone (quantize kernel with error feedback, all-gather of the payload, dequant+sum kernel), and the
size gate threshold: the smallest size from which the quantized path is faster at every larger size.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tp_common import median_max_over_ranks, tp_parser, write_json  # bench/ is the script's directory

from llm.kernels import quantize_pack as qp
from llm.parallel import comm, p2p
from llm.parallel.quant_comm import Calibration, QuantAllReduce, QuantCommConfig
from llm.parallel.state import init_tp

H = 4096


def timer(fn, iters: int, warmup: int, device: torch.device) -> float:
    """Median seconds per call (CUDA events on GPU, perf_counter on CPU), max over ranks."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            dist.barrier()
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) / 1e3)
        else:
            dist.barrier()
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return median_max_over_ranks(ts, device)


def graph_timer(fn, k: int, iters: int, device: torch.device) -> float | str:
    """Median seconds per call of `k` calls captured in one CUDA graph and replayed (max over ranks):
    the device time of the path with the host's launch cost taken out, as inside a captured forward
    pass. Returns the error text if the path cannot be captured."""
    torch.cuda.synchronize(device)
    dist.barrier()
    g = torch.cuda.CUDAGraph()
    err = ""
    try:
        with torch.cuda.graph(g):
            for _ in range(k):
                fn()
    except Exception as e:  # a path that cannot be captured: say so, keep the others
        err = f"{type(e).__name__}: {e}"[:200]
    flag = torch.tensor([1.0 if err else 0.0], device=device)
    dist.all_reduce(flag)
    if flag.item() > 0:
        return err or "capture failed on another rank"
    for _ in range(3):
        g.replay()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        dist.barrier()
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3 / k)
    out = median_max_over_ranks(ts, device)
    del g
    return out


def fake_calibration(world: int, k_div: int = 64) -> Calibration:
    g = torch.Generator().manual_seed(0)
    r = torch.rand(world, H, generator=g)
    r[:, torch.randperm(H, generator=g)[: H // k_div]] += 50
    return Calibration({"bench": r}, tp=world)


def plot(paths: list[str], png: str) -> None:
    """Latency and speed-up vs message size, one panel pair per JSON (e.g. NVLink and no-P2P)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(Path(p).read_text()) for p in paths]
    fig, axes = plt.subplots(2, len(runs), figsize=(5.5 * len(runs), 7), squeeze=False)
    for j, r in enumerate(runs):
        rows = r["rows"]
        mb = [row["bytes"] / 2**20 for row in rows]
        ax = axes[0][j]
        for key, label in (("nccl_bf16_s", "NCCL bf16 all-reduce"), ("one_shot_s", "quantized one-shot"),
                           ("pipelined_s", "one-shot, 4 chunks"), ("two_shot_s", "quantized two-shot"),
                           ("p2p_s", "one-shot, kernel pushes to peer"),
                           ("allgather_payload_s", "all-gather of payload"),
                           ("nccl_bf16_graph_s", "NCCL bf16, CUDA graph"), ("one_shot_graph_s", "one-shot, CUDA graph"),
                           ("p2p_graph_s", "peer push, CUDA graph")):
            if isinstance(rows[0].get(key), float):
                ax.loglog(mb, [row[key] * 1e6 for row in rows], marker="o", ms=3, label=label,
                          ls="--" if "graph" in key else "-")
        ax.set_title(f"{r['tag']}: {r['world_size']} x {r['device']}")
        ax.set_xlabel("message (MB, bf16)")
        ax.set_ylabel("latency (us)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax = axes[1][j]
        for key, label in (("speedup_one_shot", "one-shot"), ("speedup_two_shot", "two-shot"),
                           ("speedup_pipelined", "4 chunks"), ("speedup_p2p", "peer push"),
                           ("speedup_one_shot_graph", "one-shot, graphs"), ("speedup_p2p_graph", "peer push, graphs")):
            if key in rows[0]:
                ax.semilogx(mb, [row.get(key, float("nan")) for row in rows], marker="o", ms=3, label=label,
                            ls="--" if "graph" in key else "-")
        ax.axhline(1.0, color="k", lw=0.8)
        target = 3.0 if r.get("nccl_p2p_disable") == "1" else 2.5  # issue #7, from 32 MB
        ax.axhline(target, color="r", lw=0.8, ls=":", label=f"target {target}x (>= 32 MB)")
        ax.set_ylim(0, max(ax.get_ylim()[1], target * 1.1))
        ax.set_xlabel("message (MB, bf16)")
        ax.set_ylabel("speed-up vs NCCL bf16")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"quantized all-reduce ({runs[0]['bits_per_value']:.3f} bits/value incl. scales and outliers)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = tp_parser(__doc__, "docs/tp_comm.png")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--max-mb", type=float, default=128)
    ap.add_argument("--min-mb", type=float, default=0, help="smallest message (default 8 KB)")
    ap.add_argument("--tile", default="", help="block_r,block_g,num_warps of the quantize kernel (0: its default)")
    ap.add_argument("--dq-tile", default="", help="block_r,block_g,num_warps of dequant+sum (0: its default)")
    ap.add_argument("--graph", type=int, default=0,
                    help="K > 0: also time K calls of each path captured in one CUDA graph (CUDA only)")
    args = ap.parse_args()
    if args.plot:
        plot(args.plot, args.png)
        return
    smoke = os.environ.get("SMOKE") == "1"
    st = init_tp(device=args.device)
    dev = st.device
    w = st.world_size
    dtype = torch.bfloat16
    iters, warmup = (3, 1) if smoke else (args.iters, 5)
    max_bytes = (256 << 10) if smoke else int(args.max_mb * (1 << 20))
    sizes = []
    b = max(8 << 10, int(args.min_mb * (1 << 20)))
    while b <= max_bytes:
        sizes.append(b)
        b *= 2
    cal = fake_calibration(w)
    # the kernels' tiles and warps: the library defaults (bench/tp_kernels.py sweeps them on one GPU) or --tile
    kern = dict(quant_tile=tuple(int(v) or None for v in args.tile.split(",")) if args.tile else None,
                dequant_tile=tuple(int(v) or None for v in args.dq_tile.split(",")) if args.dq_tile else None)
    quants = {
        "one_shot": QuantAllReduce(QuantCommConfig(min_bytes=0, transport="nccl", **kern), cal),
        "pipelined": QuantAllReduce(QuantCommConfig(min_bytes=0, chunks=4, **kern), cal),
        "two_shot": QuantAllReduce(QuantCommConfig(min_bytes=0, mode="two_shot", **kern), cal),
    }
    if p2p.available(None, dev):  # one-shot with the quantize kernel pushing into mapped peer buffers
        quants["p2p"] = QuantAllReduce(QuantCommConfig(min_bytes=0, transport="p2p", **kern), cal)

    def call(q, x):
        q(x, "bench")
        q._last = -1  # the next call continues the forward pass: it reads the carried error, as in a model
    rows_out = []
    for nbytes in sizes:
        n = nbytes // (2 * H)
        x0 = torch.randn(n, H, device=dev, dtype=dtype)
        x = x0.clone()
        row = {"bytes": nbytes, "rows": n}
        # every path sums in place (x doubles per call): each starts from the same values
        row["nccl_bf16_s"] = timer(lambda x=x: dist.all_reduce(x), iters, warmup, dev)
        for name, q in quants.items():
            x.copy_(x0)
            row[f"{name}_s"] = timer(lambda x=x, q=q: call(q, x), iters, warmup, dev)
        if args.graph and dev.type == "cuda":
            x.copy_(x0)
            row["nccl_bf16_graph_s"] = graph_timer(lambda x=x: dist.all_reduce(x), args.graph, iters, dev)
            for name, q in quants.items():
                x.copy_(x0)
                row[f"{name}_graph_s"] = graph_timer(lambda x=x, q=q: call(q, x), args.graph, iters, dev)
                if isinstance(row[f"{name}_graph_s"], float) and isinstance(row["nccl_bf16_graph_s"], float):
                    row[f"speedup_{name}_graph"] = row["nccl_bf16_graph_s"] / row[f"{name}_graph_s"]
            if st.rank == 0:
                print(f"{nbytes / 2**20:9.3f} MB  graphs of {args.graph}: "
                      + "  ".join(f"{k[:-8]} {v * 1e6:.1f} us" if isinstance(v, float) else f"{k[:-8]} {v}"
                                  for k, v in row.items() if k.endswith("_graph_s"))
                      + "  " + "  ".join(f"{k[8:-6]} {v:.2f}x" for k, v in row.items()
                                         if k.startswith("speedup_") and k.endswith("_graph")), flush=True)
        x.copy_(x0)
        q = quants["one_shot"]
        s = q._site("bench", H, dev)
        lay = qp.layout(n, H, 128, s.idx.numel())
        mine = q.quantize(x, s)
        bufs = torch.empty(w, lay.total, dtype=torch.uint8, device=dev)
        err = torch.zeros_like(x)
        row["quantize_s"] = timer(lambda x=x, q=q, s=s, e=err: q.quantize(x, s, err=e), iters, warmup, dev)
        row["allgather_payload_s"] = timer(lambda m=mine, b=bufs: comm.gather_into(b.view(-1), m),
                                           iters, warmup, dev)
        row["dequant_sum_s"] = timer(lambda b=bufs, q=q, s=s, lay=lay: q.dequant_sum(b, lay, s, dtype),
                                     iters, warmup, dev)
        row["payload_bytes"] = lay.total
        for name in quants:
            row[f"speedup_{name}"] = row["nccl_bf16_s"] / row[f"{name}_s"]
        rows_out.append(row)
        if st.rank == 0:
            print(f"{nbytes / 2**20:9.3f} MB  nccl {row['nccl_bf16_s'] * 1e6:9.1f} us  "
                  f"1shot {row['one_shot_s'] * 1e6:9.1f} us ({row['speedup_one_shot']:.2f}x)  "
                  f"pipe {row['pipelined_s'] * 1e6:9.1f} us ({row['speedup_pipelined']:.2f}x)  "
                  f"2shot {row['two_shot_s'] * 1e6:9.1f} us ({row['speedup_two_shot']:.2f}x)  "
                  + (f"p2p {row['p2p_s'] * 1e6:9.1f} us ({row['speedup_p2p']:.2f}x)  " if "p2p" in quants else "")
                  + f"[q {row['quantize_s'] * 1e6:.1f} ag {row['allgather_payload_s'] * 1e6:.1f} "
                  f"dq {row['dequant_sum_s'] * 1e6:.1f}]", flush=True)
    gate = None
    for r in reversed(rows_out):
        if min(r[f"{name}_s"] for name in quants) < r["nccl_bf16_s"]:
            gate = r["bytes"]
        else:
            break
    res = {"tag": args.tag, "world_size": w, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda"
           else "cpu", "torch": torch.__version__, "hidden": H, "group_size": 128,
           "quant_tile": quants["one_shot"].cfg.quant_tile, "dequant_tile": quants["one_shot"].cfg.dequant_tile,
           "bits_per_value": quants["one_shot"].bits_per_value(H),
           "nccl_p2p_disable": os.environ.get("NCCL_P2P_DISABLE", ""), "gate_min_bytes": gate,
           "paths": sorted(quants),
           "smoke": smoke, "graph_calls": args.graph, "rows": rows_out}
    if st.rank == 0:
        write_json(args.out, res)
        print(f"gate (quantized faster from here up): {gate} bytes; bits/value {res['bits_per_value']:.3f}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
