"""End-to-end TP prefill TTFT and decode tokens/s, bf16 all-reduce vs the quantized all-reduce.

Run on 2 GPUs:  torchrun --nproc-per-node 2 bench/tp_e2e.py --out runs/tp_e2e.json
CPU smoke test: SMOKE=1 torchrun --nproc-per-node 2 bench/tp_e2e.py --device cpu --out /tmp/e.json

The model is `llm.model.Transformer` with a Llama-3-8B shape (dim 4096, 32 layers, 32 heads, 8 KV
heads, MLP 14336, vocab 128256; `--shape 70b`: Llama-3-70B, dim 8192, 80 layers, 64 heads, MLP
28672, for TP=4/8; `--layers N` keeps the first N layers) and random bf16 weights: built on the meta device, sharded by
`apply_tp`, filled on the GPU. Prefill = one forward of a [1, S] prompt (last-position logits),
median of 3 after a warm-up, max over ranks (`--graphs`: timed as CUDA-graph replays, as the engine's
prefill graphs run it). Decode = greedy steps with the KV cache, batch 1 and 16. Communication
modes: plain NCCL bf16; quantized one-shot (error feedback, the default), one-shot over 4
row chunks (pipelined) and two-shot, behind a 1 MB gate (decode-sized messages stay on NCCL).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tp_common import median_max_over_ranks, tp_parser, write_json  # bench/ is the script's directory

from llm.model import ModelArgs, Transformer
from llm.parallel import comm, p2p
from llm.parallel.quant_comm import Calibration, QuantAllReduce, QuantCommConfig
from llm.parallel.state import init_tp
from llm.parallel.tp import apply_tp, reduction_sites

SHAPE_8B = dict(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
                intermediate_size=14336, max_position_embeddings=8192, rope_theta=500000.0)
SHAPE_70B = dict(vocab_size=128256, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, head_dim=128,
                 intermediate_size=28672, max_position_embeddings=8192, rope_theta=500000.0)
SHAPES = {"8b": SHAPE_8B, "70b": SHAPE_70B}
SHAPE_SMOKE = dict(vocab_size=512, dim=256, n_layers=2, n_heads=8, n_kv_heads=4, head_dim=32,
                   intermediate_size=512, max_position_embeddings=1024)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, reps: int) -> float:
    """Median wall seconds of fn over reps (after one warm-up), max over ranks."""
    fn()
    ts = []
    for _ in range(reps):
        dist.barrier()
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        ts.append(time.perf_counter() - t)
    return median_max_over_ranks(ts, dev)


def graphed(fn, dev: torch.device):
    """fn captured in a CUDA graph after two warm-up calls on a side stream (the quantized paths allocate
    their buffers on first use); returns the replay. CPU: fn itself."""
    if dev.type != "cuda":
        return fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def build(shape: dict, dev: torch.device, dtype: torch.dtype) -> Transformer:
    args = ModelArgs(model_type="llama", **shape)
    with torch.device("meta"):
        model = Transformer(args).to(dtype)
    apply_tp(model, device=dev)
    g = torch.Generator(device=dev).manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model.eval()


def plot(paths: list[str], png: str) -> None:
    """Prefill TTFT per prompt length and communication mode, one panel per JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(Path(p).read_text()) for p in paths]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    for ax, r in zip(axes[0], runs, strict=True):
        lengths = list(r["prefill"])
        modes = list(r["prefill"][lengths[0]])
        wd = 0.8 / len(modes)
        for k, m in enumerate(modes):
            ys = [r["prefill"][s][m]["ttft_s"] * 1e3 for s in lengths]
            xs = [i + (k - (len(modes) - 1) / 2) * wd for i in range(len(lengths))]
            bars = ax.bar(xs, ys, width=wd, label=m)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(range(len(lengths)), [f"{s} tokens" for s in lengths])
        ax.set_ylabel("prefill TTFT (ms)")
        ax.set_title(f"{r['tag']}: TP={r['world_size']}, {r['shape']['n_layers']} layers x dim {r['shape']['dim']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = tp_parser(__doc__, "docs/tp_e2e.png")
    ap.add_argument("--prompts", default="2048,8192")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--layers", type=int, default=0, help="keep only the first N layers (0: all)")
    ap.add_argument("--graphs", action="store_true",
                    help="time prefill as CUDA-graph replays (the engine's prefill_graphs): device time, no host cost")
    args = ap.parse_args()
    if args.plot:
        plot(args.plot, args.png)
        return
    smoke = os.environ.get("SMOKE") == "1"
    st = init_tp(device=args.device)
    dev, w = st.device, st.world_size
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    shape = dict(SHAPE_SMOKE if smoke else SHAPES[args.shape])
    if args.layers:
        shape["n_layers"] = args.layers
    prompts = [64, 256] if smoke else [int(s) for s in args.prompts.split(",")]
    reps, n_decode = (2, 4) if smoke else (3, 32)
    model = build(shape, dev, dtype)
    g = torch.Generator().manual_seed(0)
    ranges = {s: torch.rand(w, shape["dim"], generator=g) for s in reduction_sites(model)}
    cal = Calibration(ranges, tp=w)
    # the gate is the point of comparison here: quantize every message of at least 1 MB (decode-sized
    # ones stay on NCCL); the production default (default_min_bytes) may switch it off on NVLink
    min_bytes = 0 if smoke else 1 << 20
    modes = {"nccl_bf16": None,
             "quant_one_shot": QuantAllReduce(QuantCommConfig(min_bytes=min_bytes, transport="nccl"), cal),
             "quant_pipelined": QuantAllReduce(QuantCommConfig(min_bytes=min_bytes, chunks=4), cal),
             "quant_two_shot": QuantAllReduce(QuantCommConfig(min_bytes=min_bytes, mode="two_shot"), cal)}
    if p2p.available(None, dev):  # one-shot, the quantize kernel pushing into mapped peer buffers
        modes["quant_p2p"] = QuantAllReduce(QuantCommConfig(min_bytes=min_bytes, transport="p2p"), cal)
    res = {"tag": args.tag, "world_size": w, "shape": shape, "dtype": str(dtype), "smoke": smoke, "graphs": args.graphs,
           "nccl_p2p_disable": os.environ.get("NCCL_P2P_DISABLE", ""), "gate_min_bytes": min_bytes,
           "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "prefill": {}, "decode": {}}
    with torch.inference_mode():
        for s in prompts:
            model.setup_caches(1, s + 8)
            tokens = torch.randint(0, shape["vocab_size"], (1, s), generator=g).to(dev)
            pos = torch.arange(s, device=dev)[None]
            for name, q in modes.items():
                comm.set_quantizer(q)
                comm.stats.clear()
                fn = lambda tokens=tokens, pos=pos: model(tokens, pos, fresh=True, last_only=True)  # noqa: E731
                if args.graphs:
                    fn = graphed(fn, dev)
                t = timed(fn, dev, reps)
                del fn  # a captured graph holds its memory pool
                res["prefill"].setdefault(str(s), {})[name] = {"ttft_s": t, "stats": dict(comm.stats)}
                if st.rank == 0:
                    print(f"prefill {s:6d} tokens  {name:15s} TTFT {t * 1e3:8.2f} ms  {dict(comm.stats)}", flush=True)
        ctx = 64 if smoke else 512
        for batch in (1, 16):
            model.setup_caches(batch, ctx + n_decode + 8)
            tokens = torch.randint(0, shape["vocab_size"], (batch, ctx), generator=g).to(dev)
            pos = torch.arange(ctx, device=dev)[None].expand(batch, ctx)
            for name, q in modes.items():
                comm.set_quantizer(q)
                model(tokens, pos, fresh=True, last_only=True)

                def decode(batch=batch):
                    nxt = torch.zeros(batch, 1, dtype=torch.long, device=dev)
                    for i in range(n_decode):
                        p = torch.full((batch, 1), ctx + i, device=dev)
                        nxt = model(nxt, p, kv_len=ctx + i + 1).argmax(-1)

                t = timed(decode, dev, reps)
                tps = batch * n_decode / t
                res["decode"].setdefault(str(batch), {})[name] = {"tok_s": tps, "step_ms": t / n_decode * 1e3}
                if st.rank == 0:
                    print(f"decode batch {batch:3d}  {name:15s} {tps:9.1f} tok/s  "
                          f"({t / n_decode * 1e3:.2f} ms/step)", flush=True)
    comm.set_quantizer(None)
    for d in res["prefill"].values():
        base = d["nccl_bf16"]["ttft_s"]
        for name in modes:
            d[name]["ttft_reduction"] = 1 - d[name]["ttft_s"] / base
    if st.rank == 0:
        write_json(args.out, res)
        for s, d in res["prefill"].items():
            print(f"TTFT reduction at {s}: one-shot {d['quant_one_shot']['ttft_reduction']:.1%}, "
                  f"pipelined {d['quant_pipelined']['ttft_reduction']:.1%}, "
                  f"two-shot {d['quant_two_shot']['ttft_reduction']:.1%}"
                  + (f", p2p {d['quant_p2p']['ttft_reduction']:.1%}" if "quant_p2p" in d else ""))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
