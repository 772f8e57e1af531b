"""Where the time of a batch-1 decode step and of a long prefill goes (issue #6), with torch.profiler.

Decode: each weight GEMV's bandwidth at batch 1, the captured step's GPU time alone (replays back
to back, no host in between) vs the engine's time per token (one-step and multi-step), and kernel
tables of the graph replay and of one eager step (ops and counts per step). Prefill at one length:
our eager forward vs transformers' (kernel tables), attention alone under each SDPA backend, whole
forwards with other backends and torch.compile, and the model FLOP utilisation. Writes
`profile.json` and `*.txt` tables into --out-dir and prints a summary.

    python bench/llm_profile.py --device cuda --model random-1b --out-dir runs/llm_profile
    python bench/llm_profile.py --device cpu --smoke --out-dir /tmp/prof   # tiny shapes, tests the script
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch._dynamo
import torch._inductor.config
import torch.nn.functional as F

# bench/ is the script's directory
from llm_engine import decode_weight_bytes, make_random, ours_decode, rand_prompts, sync

from llm.cuda_graphs import DecodeGraphs  # noqa: E402 (llm_engine put the repository root on sys.path)
from llm.engine import Engine, SamplingParams  # llm_engine put the repository root on sys.path

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, SXM


class _EagerGraphs(DecodeGraphs):
    """--smoke on CPU: the decode graphs' buffers and bookkeeping, the graph replaced by a call."""

    def _graph(self, fwd):
        out = fwd().clone()

        class _Replay:
            def replay(self):
                out.copy_(fwd())

        return _Replay(), out


def timed(fn, dev: torch.device, n: int) -> float:
    """Seconds per call of `fn`, n calls back to back after one warm-up, one sync at the end."""
    fn()
    sync(dev)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(dev)
    return (time.perf_counter() - t) / n


def profile_table(fn, dev: torch.device, path: Path, n: int, rows: int = 45) -> dict:
    """Profile n calls of `fn`; write the key_averages table; kernels and GPU ms per call."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    fn()
    sync(dev)
    with profile(activities=acts) as prof:
        for _ in range(n):
            fn()
        sync(dev)
    avg = prof.key_averages()
    sort = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    path.write_text(avg.table(sort_by=sort, row_limit=rows, max_name_column_width=90))
    kernels = [e for e in avg if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    return {"kernels_per_call": round(sum(e.count for e in kernels) / n, 1),
            "kernel_ms_per_call": round(sum(e.self_device_time_total for e in kernels) / n / 1e3, 3),
            "table": path.name}


def gemv_bandwidth(model, dev: torch.device, reps: int) -> dict:
    """Each distinct weight's batch-1 GEMV: microseconds and GB/s (weight bytes / time)."""
    layer = model.layers[0]
    mods = {"wqkv": layer.attention.wqkv, "wo": layer.attention.wo, "output (lm_head)": model.output}
    ff = layer.feed_forward
    if hasattr(ff, "w1"):
        mods.update(w1=ff.w1, w2=ff.w2, w3=ff.w3)
    out = {}
    for name, m in mods.items():
        w = m.weight
        x = torch.randn(1, w.shape[1], device=dev, dtype=w.dtype)
        s = timed(lambda w=w, x=x: F.linear(x, w), dev, reps)
        out[name] = {"shape": list(w.shape), "us": round(s * 1e6, 1),
                     "GBps": round(w.numel() * w.element_size() / s / 1e9, 1)}
    return out


@torch.inference_mode()
def decode_profile(eng: Engine, a, dev: torch.device, out_dir: Path, tag: str) -> dict:
    """Graph-only step time vs engine time per token, and kernel tables, at batch 1."""
    res: dict = {}
    vocab = eng.model.args.vocab_size
    prompt = rand_prompts(1, a.decode_prompt_len, vocab, 1)[0]
    t = time.perf_counter()
    eng.generate_ids([prompt], SamplingParams(max_tokens=2, ignore_eos=True))  # captures (and compiles)
    res["first_request_s"] = round(time.perf_counter() - t, 2)
    pos = [a.decode_prompt_len + 8]
    if eng.graphs is not None:
        key = eng.graphs._bucket([0], pos)
        g, buf, _, _ = eng.graphs.graphs[key]
        n = min(50, eng.graphs.max_steps, key[1] - pos[0] - 1)  # within the ring and the kv bucket

        def graph_steps():  # n replays feeding each other, as a multi-step run does
            eng.graphs._load(buf, key[0], [0], [prompt[-1]], pos)
            for _ in range(n):
                g.replay()

        res["graph_only_ms_per_step"] = round(timed(graph_steps, dev, max(1, a.steps // n)) / n * 1e3, 4)
        k = profile_table(graph_steps, dev, out_dir / f"decode_graph_kernels{tag}.txt", 1)
        res["graph_kernels"] = {"kernels_per_step": round(k["kernels_per_call"] / n, 1),
                                "kernel_ms_per_step": round(k["kernel_ms_per_call"] / n, 4), "table": k["table"],
                                "steps_profiled": n}
    if not tag:  # the eager ops (names, counts per step) are the same with or without compile
        tok = torch.tensor([[prompt[-1]]], device=dev)
        p = torch.tensor([pos], device=dev)
        step = lambda: eng.model(tok, p, None, kv_len=256)  # noqa: E731
        res["eager_ms_per_step"] = round(timed(step, dev, 10) * 1e3, 3)
        res["eager_ops"] = profile_table(step, dev, out_dir / "decode_eager_ops.txt", 5, rows=60)
    for k in (1, *a.decode_steps):  # decode only (prefill excluded), as bench/llm_engine.py measures it
        eng.decode_steps = k
        res[f"decode_tok_s_k{k}"] = round(ours_decode(eng, 1, a.gen, a.decode_prompt_len), 1)
    eng.decode_steps = 1
    return res


def attention_backends(model, S: int, dev: torch.device, reps: int) -> dict:
    """Causal attention of one prefill layer alone under each SDPA backend (ms, TFLOPS)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    a0 = model.layers[0].attention
    hq, hk, d = a0.n_local_heads, a0.n_local_kv_heads, a0.head_dim
    q = torch.randn(1, S, hq, d, device=dev, dtype=model.dtype).transpose(1, 2)  # as the model: a view
    k = torch.randn(1, hk, S, d, device=dev, dtype=model.dtype)
    v = torch.randn_like(k)
    kr, vr = k.repeat_interleave(hq // hk, 1), v.repeat_interleave(hq // hk, 1)
    flops = 4 * S * S * d * hq / 2
    out = {}
    cases = {"default": (None, False), "flash": (SDPBackend.FLASH_ATTENTION, False),
             "cudnn": (SDPBackend.CUDNN_ATTENTION, False), "efficient": (SDPBackend.EFFICIENT_ATTENTION, False),
             "flash_gqa": (SDPBackend.FLASH_ATTENTION, True), "default_gqa": (None, True)}
    for name, (backend, gqa) in cases.items():
        if dev.type != "cuda" and backend not in (None,):
            continue
        kk, vv = (k, v) if gqa else (kr, vr)

        def fn(kk=kk, vv=vv, gqa=gqa):
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)

        try:
            if backend is None:
                s = timed(fn, dev, reps)
            else:
                with sdpa_kernel([backend]):
                    s = timed(fn, dev, reps)
            out[name] = {"ms": round(s * 1e3, 3), "TFLOPS": round(flops / s / 1e12, 1)}
        except Exception as e:  # a backend that does not take these inputs
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:160]}"}
    out["repeat_interleave_kv_ms"] = round(timed(lambda: (k.repeat_interleave(hq // hk, 1),
                                                          v.repeat_interleave(hq // hk, 1)), dev, reps) * 1e3, 3)
    return out


def prefill_flops(model, S: int) -> float:
    """Forward FLOPs of an S-token prefill, logits of the last position only (causal attention halved)."""
    args = model.args
    body = sum(p.numel() for n, p in model.named_parameters() if n.startswith("layers.") and p.dim() == 2)
    attn = 4 * S * S * args.head_dim * args.n_heads * args.n_layers / 2
    return 2 * body * S + attn + 2 * model.output.weight.numel()


@torch.inference_mode()
def prefill_profile(eng: Engine, path: Path, a, dev: torch.device, out_dir: Path) -> dict:
    """Our eager prefill forward vs transformers', kernel tables, backends, compile, MFU."""
    model, S = eng.model, a.prompt_len
    ids = torch.tensor(rand_prompts(1, S, model.args.vocab_size, 7), device=dev)
    pos = torch.arange(S, device=dev)[None]
    slot = torch.zeros(1, dtype=torch.long, device=dev)

    def fwd(m=model):
        return m(ids, pos, slot, kv_len=S, fresh=True, last_only=True)

    flops = prefill_flops(model, S)
    peak = next((v for k, v in PEAK_TFLOPS.items() if dev.type == "cuda" and k in torch.cuda.get_device_name(dev)),
                None)
    res: dict = {"prompt_len": S, "GFLOP": round(flops / 1e9, 1), "peak_TFLOPS": peak}

    def record(name, s):
        res[name] = {"ms": round(s * 1e3, 2), "TFLOPS": round(flops / s / 1e12, 1),
                     "MFU_pct": round(100 * flops / s / 1e12 / peak, 1) if peak else None}

    record("ours_eager", timed(fwd, dev, a.reps))
    res["ours_ops"] = profile_table(fwd, dev, out_dir / "prefill_ours_ops.txt", 2, rows=50)
    res["attention_alone"] = attention_backends(model, S, dev, a.reps)
    if a.compile_prefill:
        t = time.perf_counter()
        try:
            cm = torch.compile(model, dynamic=False)
            fwd(cm)
            res["compile_s"] = round(time.perf_counter() - t, 1)
            record("ours_compiled", timed(lambda: fwd(cm), dev, a.reps))
            res["compiled_ops"] = profile_table(lambda: fwd(cm), dev, out_dir / "prefill_compiled_ops.txt", 2)
        except Exception as e:
            res["ours_compiled"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    if a.hf:
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=model.dtype).to(dev).eval()
        res["hf_attn_implementation"] = hf.config._attn_implementation
        hfwd = lambda: hf(ids, logits_to_keep=1)  # noqa: E731
        record("hf_forward", timed(hfwd, dev, a.reps))
        res["hf_ops"] = profile_table(hfwd, dev, out_dir / "prefill_hf_ops.txt", 2, rows=50)
        del hf
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="random-1b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="bf16 on CUDA, fp32 on CPU when unset")
    ap.add_argument("--prompt-len", type=int, default=8192, help="prefill length profiled")
    ap.add_argument("--decode-prompt-len", type=int, default=32)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--decode-steps", default="4,16,64", help="K values for the engine time per token")
    ap.add_argument("--steps", type=int, default=200, help="graph replays timed")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--parts", default="decode,compiled,prefill", help="any of decode,compiled,prefill")
    ap.add_argument("--compile-variants", default="base,sum,sum+cdt",
                    help="compiled decode variants: sum = multiply+sum attention, cdt = coordinate-descent tuning")
    ap.add_argument("--compile-prefill", action="store_true", help="also torch.compile the prefill forward")
    ap.add_argument("--no-hf", dest="hf", action="store_false")
    ap.add_argument("--smoke", action="store_true", help="tiny random shapes (to test the script)")
    ap.add_argument("--workdir", default="/tmp/llm_bench_models")
    ap.add_argument("--out-dir", default="runs/llm_profile")
    a = ap.parse_args()
    a.decode_steps = [int(x) for x in a.decode_steps.split(",") if x]
    a.compile_variants = [x for x in a.compile_variants.split(",") if x]
    parts = set(a.parts.split(","))
    dev = torch.device(a.device)
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = make_random(a.model, Path(a.workdir), dev, a.smoke) if a.model.startswith("random-") else Path(a.model)
    out = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "args": vars(a)}

    def save():
        (out_dir / "profile.json").write_text(json.dumps(out, indent=1))

    def phase(name, fn):
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        try:
            out[name] = fn()
        except Exception as e:  # keep what the other phases measured
            import traceback

            traceback.print_exc()
            out[name] = {"error": f"{type(e).__name__}: {e}"}
        out[name + "_wall_s"] = round(time.perf_counter() - t, 1)
        save()
        print(json.dumps(out[name], indent=1)[:3000], flush=True)

    ctx = max(a.prompt_len, a.decode_prompt_len + a.gen) + 16
    eng = Engine.from_pretrained(path, device=str(dev), dtype=a.dtype, max_batch_size=1, max_context=ctx,
                                 max_prefill_tokens_per_step=ctx, detokenize=False)
    if a.smoke and dev.type == "cpu":
        torch.set_num_threads(1)
        eng.graphs = _EagerGraphs(eng.model, 1, eng.cache_len)
    wbytes = decode_weight_bytes(eng.model)
    out["decode_weight_MB"] = round(wbytes / 1e6, 1)
    if dev.type == "cuda":
        from llm_engine import copy_bandwidth

        out["bandwidth_GBps"] = round(copy_bandwidth(dev, 1 << 30) / 1e9, 1)
    if "decode" in parts:
        phase("gemv", lambda: gemv_bandwidth(eng.model, dev, 200))
        phase("decode", lambda: decode_profile(eng, a, dev, out_dir, ""))
    if "prefill" in parts:
        phase("prefill", lambda: prefill_profile(eng, path, a, dev, out_dir))
    if "compiled" in parts and (dev.type == "cuda" or a.smoke):
        del eng
        for variant in a.compile_variants:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            torch._dynamo.reset()
            # cdt: inductor's coordinate-descent tuning of its kernels' launch configurations
            torch._inductor.config.coordinate_descent_tuning = "cdt" in variant
            eng = Engine.from_pretrained(path, device=str(dev), dtype=a.dtype, max_batch_size=1,
                                         max_context=a.decode_prompt_len + a.gen + 16, compile=True, detokenize=False)
            eng.model.set_decode_sum_attention("sum" in variant)
            if a.smoke and dev.type == "cpu":
                eng.graphs = _EagerGraphs(eng.model, 1, eng.cache_len, compile=True)
            phase(f"decode_compiled_{variant}",
                  lambda eng=eng, v=variant: decode_profile(eng, a, dev, out_dir, f"_compiled_{v}"))
            del eng
        torch._inductor.config.coordinate_descent_tuning = False
    bound = out.get("bandwidth_GBps", 0) * 1e9 / wbytes if out.get("bandwidth_GBps") else None
    print(f"\nweights read per decode step: {out['decode_weight_MB']} MB; bound {bound and round(bound, 1)} tok/s")
    for tag in ["decode"] + [f"decode_compiled_{v}" for v in a.compile_variants]:
        r = out.get(tag, {})
        if "decode_tok_s_k1" in r:
            ks = "  ".join(f"k{k} {r[f'decode_tok_s_k{k}']}" for k in (1, *a.decode_steps))
            gk = r.get("graph_kernels", {})
            print(f"{tag}: graph-only {r.get('graph_only_ms_per_step')} ms/step ({gk.get('kernels_per_step')} "
                  f"kernels, {gk.get('kernel_ms_per_step')} ms in kernels); decode tok/s: {ks}")
    p = out.get("prefill", {})
    for k in ("ours_eager", "ours_compiled", "hf_forward"):
        if k in p:
            print(f"prefill {a.prompt_len} {k}: {p[k]}")
    save()


if __name__ == "__main__":
    main()
