"""LLM engine benchmark: TTFT and decode throughput, side by side with transformers.generate.

For each model (a local HF folder, or `random-1b` / `random-dense` / `random-moe`, made here with
transformers + save_pretrained): time to first token for each prompt length, decode tokens/s at
each batch size (CUDA graphs on, and eager at batch 1), the same with transformers.generate in the
same process, the memory-bandwidth bound (decode-read weight bytes / measured copy bandwidth)
and how many greedy tokens the two agree on. Writes JSON and prints a table.

    python bench/llm_engine.py --device cuda --models random-1b models/llm/dense models/llm/moe
    python bench/llm_engine.py --device cpu --models models/llm/dense --batches 1 --prompt-lens 256 --no-hf
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm.engine import Engine, SamplingParams  # noqa: E402

SHAPES = {  # the Llama-3.2-1B shape, and the default models' shapes (llm/train/models.py)
    "random-1b": dict(arch="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                      tie_word_embeddings=True, max_position_embeddings=131072,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192}),
    "random-dense": dict(arch="llama", vocab_size=8192, hidden_size=256, intermediate_size=576, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True,
                         max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
    "random-moe": dict(arch="mixtral", vocab_size=8192, hidden_size=256, intermediate_size=112, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True,
                       num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=8192,
                       rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
}


SAMPLED = dict(temperature=0.8, top_k=50, top_p=0.95)  # --sampled's requests (ours and transformers')


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def make_random(name: str, root: Path, device: torch.device, smoke: bool) -> Path:
    """Save a random-weight checkpoint of a known shape with transformers (bf16 on CUDA)."""
    import transformers

    shape = dict(SHAPES[name])
    arch = shape.pop("arch")
    if smoke:
        shape.update(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    out = root / name
    if (out / "config.json").is_file():
        return out
    cfg = (transformers.LlamaConfig if arch == "llama" else transformers.MixtralConfig)(**shape)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(out)
    del model
    return out


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Device-memory copy bandwidth in bytes/s (read + write counted)."""
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    n = 10
    t = time.perf_counter()
    for _ in range(n):
        b.copy_(a)
    sync(device)
    return 2 * nbytes * n / (time.perf_counter() - t)


def decode_weight_bytes(model) -> int:
    """Bytes a batch-1 decode step reads: every weight, except an untied input embedding (one row)."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen or (name == "tok_embeddings.weight" and not model.args.tie_word_embeddings):
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def rand_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n, length), generator=g).tolist()


def decode_params(n: int, sampled: bool, seed: int = 0) -> SamplingParams:
    """Greedy, or --sampled's seeded temperature 0.8 / top-k 50 / top-p 0.95 (EOS off)."""
    return SamplingParams(max_tokens=n, ignore_eos=True, **(dict(SAMPLED, seed=seed) if sampled else {}))


def ours_decode(eng: Engine, batch: int, gen: int, plen: int, sampled: bool = False) -> float:
    """Decode tokens/s for `batch` requests of `plen`-token prompts, prefill excluded."""
    vocab = eng.model.args.vocab_size
    eng.generate_ids(rand_prompts(batch, plen, vocab, 1), decode_params(4, sampled))
    for i, p in enumerate(rand_prompts(batch, plen, vocab, 2)):
        eng.add_request(f"d{i}", p, decode_params(gen, sampled, seed=i))
    started = set()
    while len(started) < batch:
        started |= {o.request_id for o in eng.step()}
    sync(eng.device)
    t, toks = time.perf_counter(), 0
    while eng.has_unfinished():
        toks += sum(len(o.new_token_ids) for o in eng.step())
    sync(eng.device)
    return toks / (time.perf_counter() - t)


def ttft_times(eng: Engine, plen: int, reps: int) -> list[float]:
    """Seconds from add_request to the first token, `reps` + 1 runs (the first pays one-off costs)."""
    times = []
    for r in range(reps + 1):
        p = rand_prompts(1, plen, eng.model.args.vocab_size, 10 + r)[0]
        sync(eng.device)
        t = time.perf_counter()
        eng.add_request(f"t{r}", p, SamplingParams(max_tokens=1, ignore_eos=True))
        while eng.has_unfinished():
            eng.step()
        sync(eng.device)
        times.append(time.perf_counter() - t)
    return times


def ours_ttft(eng: Engine, plen: int, reps: int) -> float:
    return statistics.median(ttft_times(eng, plen, reps)[1:])  # the first run pays one-off kernel selection


def hf_generate(hf, ids: list[list[int]], n: int, sampled: bool = False) -> tuple[float, torch.Tensor]:
    cfg = hf.generation_config
    warp = SAMPLED if sampled else dict(temperature=1.0, top_k=50, top_p=1.0)  # HF's defaults when greedy
    cfg.update(eos_token_id=[], max_new_tokens=n, min_new_tokens=None, do_sample=sampled, pad_token_id=0, **warp)
    x = torch.tensor(ids, device=hf.device)
    sync(hf.device)
    t = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(x, attention_mask=torch.ones_like(x), generation_config=cfg)
    sync(hf.device)
    return time.perf_counter() - t, out[:, x.shape[1]:]


def hf_decode(hf, batch: int, gen: int, plen: int, vocab: int, sampled: bool = False) -> float:
    ids = rand_prompts(batch, plen, vocab, 2)
    hf_generate(hf, ids, 4, sampled)
    t1, _ = hf_generate(hf, ids, 1, sampled)
    tn, _ = hf_generate(hf, ids, gen, sampled)
    return batch * (gen - 1) / max(tn - t1, 1e-9)


def hf_ttft(hf, plen: int, vocab: int, reps: int) -> float:
    return statistics.median(hf_generate(hf, rand_prompts(1, plen, vocab, 10 + r), 1)[0] for r in range(reps + 1))


def prefill_graph_phase(path: Path, a, max_ctx: int) -> dict:
    """Prefill-graph TTFT in a child process: a device-side assert there cannot poison this one."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "pg.json"
        cmd = [sys.executable, str(Path(__file__).resolve().with_name("llm_prefill.py")), "--models", str(path),
               *(["--smoke", "--threads", str(a.threads)] if a.smoke else []),
               "--device", a.device, "--batches", ",".join(map(str, a.batches)),
               "--prompt-lens", ",".join(map(str, a.prompt_lens)), "--reps", str(a.reps),
               "--max-context", str(max_ctx), "--out", str(out)]
        if a.dtype:
            cmd += ["--dtype", a.dtype]
        if a.compile_prefill:
            cmd += ["--compile-prefill"]
        if a.cute_prefill:
            cmd += ["--cute-prefill"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.prefill_graph_timeout)
        except subprocess.TimeoutExpired:
            return {"prefill_graphs_error": f"timed out after {a.prefill_graph_timeout} s"}
        r = json.loads(out.read_text())["models"].get(str(path), {}) if out.is_file() else {}
    if proc.returncode != 0 or "ttft_prefill_graphs" not in r:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        return {"prefill_graphs_error": f"rc={proc.returncode}: " + " | ".join(tail)}
    out = {"ttft_ms_prefill_graphs": {int(p): v["median"] for p, v in r["ttft_prefill_graphs"].items()},
           "prefill_graphs_agree": r.get("agree"), "prefill_graphs_buckets_failed": r.get("buckets_failed")}
    for key in ("ttft_prefill_graphs_compiled", "ttft_prefill_graphs_compiled_cute"):
        if r.get(key):
            out[key.replace("ttft_", "ttft_ms_", 1)] = {int(p): v["median"] for p, v in r[key].items()}
    if "cute_prefill" in r:
        out["cute_prefill"] = r["cute_prefill"]
        out["cute_prefill_agree"] = r.get("agree_compiled_cute")
    return out


def bench_model(path: Path, a, device: torch.device, bw: float, res: dict, save) -> None:
    """Fill `res` with our and transformers' numbers for one checkpoint, saving after each phase."""
    res["path"] = str(path)
    limit = json.loads((path / "config.json").read_text()).get("max_position_embeddings", 4096)
    plens = [p for p in a.prompt_lens if p + 8 <= limit]
    max_ctx = min(limit, max([*plens, a.decode_prompt_len]) + a.gen + 16)
    t = time.perf_counter()
    eng = Engine.from_pretrained(path, device=str(device), dtype=a.dtype, max_batch_size=max(a.batches),
                                 max_context=max_ctx, max_prefill_tokens_per_step=max(plens + [a.decode_prompt_len]),
                                 detokenize=False)
    res["load_s"] = round(time.perf_counter() - t, 2)
    model = eng.model
    res["params_M"] = round(sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()) / 1e6, 2)
    wbytes = decode_weight_bytes(model)
    res["decode_weight_MB"] = round(wbytes / 1e6, 1)
    res["bound_tok_s_b1"] = round(bw / wbytes, 1)
    vocab = model.args.vocab_size
    res["ttft_ms"] = {p: round(ours_ttft(eng, p, a.reps) * 1e3, 2) for p in plens}
    save()
    if a.prefill_graphs and (eng.graphs is not None or a.smoke):
        res.update(prefill_graph_phase(path, a, max_ctx))
        save()
    res["decode_tok_s"] = {b: round(ours_decode(eng, b, a.gen, a.decode_prompt_len), 1) for b in a.batches}
    if a.sampled:
        res["decode_tok_s_sampled"] = {b: round(ours_decode(eng, b, a.gen, a.decode_prompt_len, True), 1)
                                       for b in a.batches}
    graphs, eng.graphs = eng.graphs, None
    res["decode_tok_s_eager_b1"] = round(ours_decode(eng, 1, a.gen, a.decode_prompt_len), 1)
    eng.graphs = graphs
    res["pct_of_bound_b1"] = round(100 * res["decode_tok_s"][a.batches[0]] / res["bound_tok_s_b1"], 1)
    save()
    if eng.graphs is not None or a.smoke:
        multi_step_phase(eng, a, res, "")
        save()
    ids = rand_prompts(1, a.decode_prompt_len, vocab, 3)
    ours_tokens = eng.generate_ids(ids, SamplingParams(max_tokens=32, ignore_eos=True))[0]
    if a.hf:
        import transformers

        dtype = model.dtype
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        res["hf_ttft_ms"] = {p: round(hf_ttft(hf, p, vocab, a.reps) * 1e3, 2) for p in plens}
        res["hf_decode_tok_s"] = {b: round(hf_decode(hf, b, a.gen, a.decode_prompt_len, vocab), 1) for b in a.batches}
        res["decode_speedup"] = {b: round(res["decode_tok_s"][b] / res["hf_decode_tok_s"][b], 2) for b in a.batches}
        if a.sampled:
            res["hf_decode_tok_s_sampled"] = {b: round(hf_decode(hf, b, a.gen, a.decode_prompt_len, vocab, True), 1)
                                              for b in a.batches}
        res["prefill_speedup"] = {p: round(res["hf_ttft_ms"][p] / res["ttft_ms"][p], 2) for p in plens}
        for key in ("ttft_ms_prefill_graphs", "ttft_ms_prefill_graphs_compiled", "ttft_ms_prefill_graphs_compiled_cute"):
            if key in res:
                res[key.replace("ttft_ms", "prefill_speedup")] = {p: round(res["hf_ttft_ms"][p] / res[key][p], 2)
                                                                  for p in plens}
        hf_tokens = hf_generate(hf, ids, 32)[1][0].tolist()
        same = next((i for i, (x, y) in enumerate(zip(ours_tokens, hf_tokens, strict=True)) if x != y), 32)
        res["greedy_agree_prefix_of_32"] = same
        del hf
    del eng, model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def multi_step_phase(eng: Engine, a, res: dict, suffix: str, batches: list[int] | None = None) -> None:
    """Decode tok/s with decode_steps=K (K steps per host sync) for each K of --decode-steps, greedy
    (and with --sampled, sampled), and whether the tokens equal the one-step path's (they replay
    the same graphs; sampled draws depend on (seed, token index) only); per batch size."""
    if not a.decode_steps:
        return
    for b in batches or a.batches:
        ids = rand_prompts(b, a.decode_prompt_len, eng.model.args.vocab_size, 4)
        for sampled in (False, True) if a.sampled else (False,):
            tag = suffix + ("_sampled" if sampled else "")
            sp = decode_params(48, sampled, seed=3)
            eng.decode_steps = 1
            one = eng.generate_ids(ids, sp)
            for k in a.decode_steps:
                eng.decode_steps = k
                tok_s = round(ours_decode(eng, b, a.gen, a.decode_prompt_len, sampled), 1)
                res.setdefault(f"decode_tok_s{tag}_k{k}", {})[b] = tok_s
                res.setdefault(f"multi_step{tag}_k{k}_tokens_equal", {})[b] = eng.generate_ids(ids, sp) == one
                if b == a.batches[0]:
                    res[f"pct_of_bound_b1{tag}_k{k}"] = round(100 * tok_s / res["bound_tok_s_b1"], 1)
    eng.decode_steps = 1


def bench_compiled(path: Path, a, device: torch.device, res: dict, save=lambda: None) -> None:
    """Decode tok/s with the captured step compiled by torch.compile (and the compile time); `save`
    is called after each batch size (compiles are slow: keep what is measured)."""
    eng = Engine.from_pretrained(path, device=str(device), dtype=a.dtype, max_batch_size=max(a.batches),
                                 max_context=a.decode_prompt_len + a.gen + 16,
                                 compile="tuned" if a.compile_tuned else True, detokenize=False)
    res["compile_mode"] = "tuned" if a.compile_tuned else "default"
    res["decode_tok_s_compiled"], res["compile_s"] = {}, {}
    for b in a.batches:
        t = time.perf_counter()
        eng.generate_ids(rand_prompts(b, a.decode_prompt_len, eng.model.args.vocab_size, 5),
                         SamplingParams(max_tokens=2, ignore_eos=True))
        res["compile_s"][b] = round(time.perf_counter() - t, 1)
        res["decode_tok_s_compiled"][b] = round(ours_decode(eng, b, a.gen, a.decode_prompt_len), 1)
        if a.sampled:  # the first sampled request compiles the sampler and captures its graphs
            t = time.perf_counter()
            eng.generate_ids(rand_prompts(b, a.decode_prompt_len, eng.model.args.vocab_size, 5),
                             decode_params(2, True))
            res.setdefault("compile_s_sampled", {})[b] = round(time.perf_counter() - t, 1)
            res.setdefault("decode_tok_s_compiled_sampled", {})[b] = round(
                ours_decode(eng, b, a.gen, a.decode_prompt_len, True), 1)
        if b == a.batches[0]:
            res["pct_of_bound_b1_compiled"] = round(100 * res["decode_tok_s_compiled"][b] / res["bound_tok_s_b1"], 1)
        multi_step_phase(eng, a, res, "_compiled", [b])  # before the next batch's compile: keep what is measured
        save()
    if "hf_decode_tok_s" in res:
        res["decode_speedup_compiled"] = {b: round(res["decode_tok_s_compiled"][b] / res["hf_decode_tok_s"][b], 2)
                                          for b in a.batches}


def print_table(out: dict) -> None:
    print(f"\ndevice: {out['device']}  copy bandwidth: {out['bandwidth_GBps']} GB/s")
    for name, r in out["models"].items():
        if "error" in r or "decode_tok_s_eager_b1" not in r:
            print(f"{name}: incomplete {r}")
            continue
        print(f"\n{name}: {r['params_M']}M params, bound at batch 1: {r['bound_tok_s_b1']} tok/s "
              f"(ours {r['pct_of_bound_b1']}% of it; eager b1 {r['decode_tok_s_eager_b1']} tok/s)")
        print(f"  {'metric':<22}{'ours':>12}{'transformers':>14}{'speedup':>9}")
        for p, v in r["ttft_ms"].items():
            hv = r.get("hf_ttft_ms", {}).get(p, "-")
            print(f"  {'TTFT ms @' + str(p):<22}{v:>12}{hv:>14}{r.get('prefill_speedup', {}).get(p, '-'):>9}")
        for tag, key in (("graphs", "ttft_ms_prefill_graphs"), ("g+compile", "ttft_ms_prefill_graphs_compiled"),
                         ("g+c+cute", "ttft_ms_prefill_graphs_compiled_cute")):
            for p, v in r.get(key, {}).items():
                hv = r.get("hf_ttft_ms", {}).get(p, "-")
                sp = r.get(key.replace("ttft_ms", "prefill_speedup"), {}).get(p, "-")
                print(f"  {'TTFT ms ' + tag + ' @' + str(p):<22}{v:>12}{hv:>14}{sp:>9}")
        for b, v in r["decode_tok_s"].items():
            hv = r.get("hf_decode_tok_s", {}).get(b, "-")
            print(f"  {'decode tok/s @b' + str(b):<22}{v:>12}{hv:>14}{r.get('decode_speedup', {}).get(b, '-'):>9}")
        for b, v in r.get("decode_tok_s_compiled", {}).items():
            hv = r.get("hf_decode_tok_s", {}).get(b, "-")
            print(f"  {'compiled tok/s @b' + str(b):<22}{v:>12}{hv:>14}"
                  f"{r.get('decode_speedup_compiled', {}).get(b, '-'):>9}  (compile {r['compile_s'][b]} s)")
        for key in ("decode_tok_s_sampled", "decode_tok_s_compiled_sampled"):
            for b, v in r.get(key, {}).items():
                hv = r.get("hf_decode_tok_s_sampled", {}).get(b, "-")
                sp = round(v / hv, 2) if isinstance(hv, float) else "-"
                print(f"  {key.removeprefix('decode_tok_s_').replace('_', ' ') + ' @b' + str(b):<22}{v:>12}{hv:>14}"
                      f"{sp:>9}")
        for key in [k for k in r if k.startswith("decode_tok_s") and "_k" in k and k[-1].isdigit()]:
            tag = key.removeprefix("decode_tok_s_").replace("_", " ")
            for b, v in r[key].items():
                same = r.get(key.replace("decode_tok_s", "multi_step") + "_tokens_equal", {}).get(b)
                print(f"  {tag + ' tok/s @b' + str(b):<22}{v:>12}{'':>14}{'':>9}  (same tokens: {same})")
        if "greedy_agree_prefix_of_32" in r:
            print(f"  greedy tokens identical for the first {r['greedy_agree_prefix_of_32']}/32")


def start_run(a) -> tuple[torch.device, dict]:
    """Shared by this bench and bench/llm_prefill.py: parse the list options, set the torch threads;
    returns the device and the result's header."""
    a.batches = [int(x) for x in a.batches.split(",")]
    a.prompt_lens = [int(x) for x in a.prompt_lens.split(",")]
    a.decode_steps = [int(x) for x in getattr(a, "decode_steps", "").split(",") if x]
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    return device, {"device": name, "torch": torch.__version__, "args": vars(a), "models": {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["random-1b", "models/llm/dense", "models/llm/moe"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="bf16 on CUDA, fp32 on CPU when unset")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt-lens", default="1024,8192")
    ap.add_argument("--decode-prompt-len", type=int, default=32)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-hf", dest="hf", action="store_false")
    ap.add_argument("--smoke", action="store_true", help="tiny random shapes (to test the script)")
    ap.add_argument("--workdir", default="/tmp/llm_bench_models")
    ap.add_argument("--out", default="runs/bench/llm_engine.json")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    ap.add_argument("--compile", nargs="*", default=[], help="models to measure again with compile=True (CUDA)")
    ap.add_argument("--compile-tuned", action="store_true", help="compile='tuned' (coordinate-descent tuning)")
    ap.add_argument("--decode-steps", default="", help="comma list of K: decode tok/s with decode_steps=K too")
    ap.add_argument("--sampled", action="store_true",
                    help="decode rows for sampled requests too (temperature 0.8, top_k 50, top_p 0.95, seeded)")
    ap.add_argument("--no-prefill-graphs", dest="prefill_graphs", action="store_false",
                    help="skip the prefill-graph TTFT phase (bench/llm_prefill.py in a child process)")
    ap.add_argument("--prefill-graph-timeout", type=int, default=180)
    ap.add_argument("--compile-prefill", action="store_true", help="prefill-graph phase: compiled prefills too")
    ap.add_argument("--cute-prefill", action="store_true",
                    help="prefill-graph phase: last, with llm.kernels.cute_prefill swapped in (FA4 + SwiGLU GEMM)")
    a = ap.parse_args()
    device, out = start_run(a)
    bw = copy_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 27))
    out.update(bandwidth_GBps=round(bw / 1e9, 1), load_avg=os.getloadavg()[0])
    for m in a.models:
        name = Path(m).name if not m.startswith("random-") else m
        try:
            path = make_random(m, Path(a.workdir), device, a.smoke) if m.startswith("random-") else Path(m)
            if not (path / "config.json").is_file():
                print(f"skip {m}: no checkpoint there", flush=True)
                continue
            print(f"benchmarking {name} ...", flush=True)
            res = out["models"][name] = {}
            bench_model(path, a, device, bw, res, lambda: save(out, a.out))
        except Exception as e:  # keep the other models' numbers
            out["models"].setdefault(name, {})["error"] = f"{type(e).__name__}: {e}"
            import traceback

            traceback.print_exc()
        save(out, a.out)
    for m in a.compile:  # last: compiling is the slowest and least certain part
        name = Path(m).name if not m.startswith("random-") else m
        r = out["models"].get(name)
        if not r or "error" in r:
            continue
        print(f"compiled decode for {name} ...", flush=True)
        try:
            bench_compiled(Path(r["path"]), a, device, r, lambda: save(out, a.out))
        except Exception as e:
            r["compile_error"] = f"{type(e).__name__}: {e}"
            import traceback

            traceback.print_exc()
        save(out, a.out)
    print_table(out)


def save(out: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
