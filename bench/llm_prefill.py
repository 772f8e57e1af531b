"""TTFT of the engine's eager prefill vs captured prefills (`llm.cuda_graphs.PrefillGraphs`).

For each model: TTFT eager, then with prefill graphs, then eager again (drift check), the host vs
total time of the eager forward (host ~= total: launch-bound), and whether graph and eager logits
of one prompt agree. Used by `bench/llm_engine.py` (in a child process, so a device-side assert
cannot poison the main bench) and by `scripts/gpu/llm_prefill_debug.sh`.

    python bench/llm_prefill.py --device cuda --models random-1b --batches 8 --prompt-lens 1024,8192 --reps 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

# bench/ is the script's directory
from llm_engine import make_random, rand_prompts, save, start_run, sync, ttft_times

from llm.engine import Engine  # llm_engine put the repository root on sys.path


def _ms_stats(times: list[float]) -> dict:
    ms = [round(t * 1e3, 2) for t in times[1:]]
    return {"median": round(statistics.median(ms), 2), "min": min(ms), "max": max(ms), "first": round(times[0] * 1e3, 1),
            "all": ms}


@torch.inference_mode()
def eager_forward_split(eng: Engine, plen: int, reps: int) -> dict:
    """Eager prefill forward alone: host ms until the last kernel is queued vs ms until it is done.

    Host ~= total means the prefill is launch-bound (host CPU speed decides), not GPU-bound.
    """
    dev = eng.device
    host, total = [], []
    for r in range(reps + 1):
        ids = torch.tensor(rand_prompts(1, plen, eng.model.args.vocab_size, 30 + r), device=dev)
        pos = torch.arange(plen, device=dev)[None]
        slots = torch.zeros(1, dtype=torch.long, device=dev)
        sync(dev)
        t = time.perf_counter()
        eng.model(ids, pos, slots, kv_len=plen, fresh=True, last_only=True)
        host.append(time.perf_counter() - t)
        sync(dev)
        total.append(time.perf_counter() - t)
    return {"host_ms": _ms_stats(host)["median"], "total_ms": _ms_stats(total)["median"]}


@torch.inference_mode()
def first_logits_agree(eng: Engine, plen: int) -> dict:
    """One prompt prefilled eagerly and by the prefill graph: same argmax? max |logit diff|?"""
    p = rand_prompts(1, plen, eng.model.args.vocab_size, 99)[0]
    dev = eng.device
    eager = eng.model(torch.tensor([p], device=dev), torch.arange(plen, device=dev)[None],
                      torch.zeros(1, dtype=torch.long, device=dev), kv_len=plen, fresh=True, last_only=True)[:, -1]
    graph = eng.prefill_graphs.run(0, p)
    if graph is None:
        return {"graph": "not used (eager fallback)"}
    return {"argmax_equal": bool(eager.argmax(-1).item() == graph.argmax(-1).item()),
            "max_abs_diff": round(float((eager - graph).abs().max()), 4)}


def prefill_graph_ttft(path: Path, a, device: torch.device, max_ctx: int, res: dict, save) -> None:
    """TTFT eager, then with prefill graphs, then eager again (drift check), in one engine; fills
    `res`, saving after each phase (a device-side assert later loses nothing measured before)."""
    from llm.cuda_graphs import PrefillGraphs

    limit = json.loads((path / "config.json").read_text()).get("max_position_embeddings", 4096)
    plens = [p for p in a.prompt_lens if p + 8 <= limit]
    eng = Engine.from_pretrained(path, device=str(device), dtype=a.dtype, max_batch_size=max(a.batches),
                                 max_context=max_ctx, max_prefill_tokens_per_step=max(plens), detokenize=False)
    res.update(max_context=max_ctx, reps=a.reps)
    res["ttft_eager"] = {p: _ms_stats(ttft_times(eng, p, a.reps)) for p in plens}
    res["eager_forward_split"] = {p: eager_forward_split(eng, p, a.reps) for p in plens}
    save()
    # on CPU every capture fails and the engine stays eager: that only tests this code path
    eng.prefill_graphs = PrefillGraphs(eng.model, eng.cache_len)
    res["ttft_prefill_graphs"] = {p: _ms_stats(ttft_times(eng, p, a.reps)) for p in plens}
    save()
    res["buckets_captured"] = sorted(eng.prefill_graphs.graphs)
    res["buckets_failed"] = sorted(eng.prefill_graphs.failed)
    res["agree"] = {p: first_logits_agree(eng, p) for p in plens}
    if a.compile_prefill:  # graphs of compiled prefills from 2048 tokens up (first call compiles)
        eng.prefill_graphs = PrefillGraphs(eng.model, eng.cache_len, compile_min_len=2048)
        res["ttft_prefill_graphs_compiled"] = {p: _ms_stats(ttft_times(eng, p, a.reps)) for p in plens}
        res["agree_compiled"] = {p: first_logits_agree(eng, p) for p in plens}
        save()
    eng.prefill_graphs = None
    res["ttft_eager_again"] = {p: _ms_stats(ttft_times(eng, p, a.reps)) for p in plens}
    save()
    if a.cute_prefill:  # last: it swaps kernels in the model for good (llm/kernels/cute_prefill.py)
        from llm.kernels import cute_prefill

        res["cute_prefill"] = cute_prefill.enable(eng.model)
        res["ttft_eager_cute"] = {p: _ms_stats(ttft_times(eng, p, a.reps)) for p in plens}
        save()
        if a.compile_prefill:
            eng.prefill_graphs = PrefillGraphs(eng.model, eng.cache_len, compile_min_len=2048)
            res["ttft_prefill_graphs_compiled_cute"] = {p: _ms_stats(ttft_times(eng, p, a.reps)) for p in plens}
            res["agree_compiled_cute"] = {p: first_logits_agree(eng, p) for p in plens}
            eng.prefill_graphs = None

def run_all(a, device: torch.device, out: dict) -> None:
    """Every model of `a.models` (results keyed by the argument); exits 1 if any failed."""
    failed = False
    for m in a.models:
        try:
            path = make_random(m, Path(a.workdir), device, a.smoke) if m.startswith("random-") else Path(m)
            limit = json.loads((path / "config.json").read_text()).get("max_position_embeddings", 4096)
            plens = [p for p in a.prompt_lens if p + 8 <= limit]
            max_ctx = a.max_context or min(limit, max([*plens, a.decode_prompt_len]) + a.gen + 16)
            print(f"prefill-graph TTFT for {m} ...", flush=True)
            prefill_graph_ttft(path, a, device, max_ctx, out["models"].setdefault(m, {}), lambda: save(out, a.out))
        except Exception as e:
            failed = True
            out["models"].setdefault(m, {})["error"] = f"{type(e).__name__}: {e}"
            import traceback

            traceback.print_exc()
        save(out, a.out)
    for m, r in out["models"].items():
        print(f"\n{m}: TTFT ms, median (min-max) of {a.reps} after one warm-up run")
        for key in ("ttft_eager", "ttft_prefill_graphs", "ttft_prefill_graphs_compiled", "ttft_eager_again",
                    "ttft_eager_cute", "ttft_prefill_graphs_compiled_cute"):
            for p, v in r.get(key, {}).items():
                print(f"  {key:<22}@{p:<6}{v['median']:>9} ({v['min']}-{v['max']})  first {v['first']}")
        for p, v in r.get("eager_forward_split", {}).items():
            print(f"  eager forward @{p}: host {v['host_ms']} ms of {v['total_ms']} ms")
        if "agree" in r:
            print(f"  graph vs eager logits: {r['agree']}  buckets {r['buckets_captured']}")
        if "error" in r:
            print(f"  error: {r['error']}")
    if failed:
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["random-1b"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="bf16 on CUDA, fp32 on CPU when unset")
    ap.add_argument("--batches", default="8", help="engine slots = the largest")
    ap.add_argument("--prompt-lens", default="1024,8192")
    ap.add_argument("--decode-prompt-len", type=int, default=32, help="for the default context, as the bench")
    ap.add_argument("--gen", type=int, default=128, help="for the default context, as the bench")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--max-context", type=int, default=0, help="0: as bench/llm_engine.py picks it")
    ap.add_argument("--compile-prefill", action="store_true", help="also prefill graphs of compiled prefills")
    ap.add_argument("--cute-prefill", action="store_true",
                    help="last, with FlashAttention-4 + the SwiGLU-epilogue GEMM swapped in (sm90+, if installed)")
    ap.add_argument("--smoke", action="store_true", help="tiny random shapes (to test the script)")
    ap.add_argument("--workdir", default="/tmp/llm_bench_models")
    ap.add_argument("--out", default="runs/bench/llm_prefill.json")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    a = ap.parse_args()
    device, out = start_run(a)
    run_all(a, device, out)


if __name__ == "__main__":
    main()
