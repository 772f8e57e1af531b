"""Does inductor's max-autotune close the 8k-prefill gap of issue #6? One 8,192-token forward of
the Llama-3.2-1B shape (random bf16 weights), eager vs torch.compile (default) vs
torch.compile(mode="max-autotune-no-cudagraphs"), which benchmarks Triton GEMM templates against
cuBLAS per shape and can fuse pointwise epilogues (the SwiGLU product into w3's GEMM, residual adds
into wo/w2) into a template. Writes $OUT/prefill_autotune.json and prints a table.

    python scripts/gpu/prefill_autotune.py [--tokens 8192] [--modes default max-autotune-no-cudagraphs]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
from llm_engine import SHAPES  # noqa: E402  (bench/llm_engine.py: the shape its TTFT rows use)

from llm.loader import load_model  # noqa: E402

SHAPE = {k: v for k, v in SHAPES["random-1b"].items() if k != "arch"}


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def random_1b(tokens: int):
    """The random-weight Llama-3.2-1B-shaped model (bf16, CUDA, saved and loaded through an HF folder) with a
    cache for `tokens`, and one prompt of that length: (model, tokens [1, L], positions [1, L])."""
    import transformers

    root = Path(tempfile.mkdtemp())
    with torch.device("cuda"):
        hf = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**SHAPE), dtype=torch.bfloat16)
    hf.save_pretrained(root / "m")
    del hf
    model, _ = load_model(root / "m", "cuda")
    model.setup_caches(1, tokens + 64)
    g = torch.Generator(device="cuda").manual_seed(0)
    tok = torch.randint(0, SHAPE["vocab_size"], (1, tokens), device="cuda", generator=g)
    return model, tok, torch.arange(tokens, device="cuda")[None]


def measure(run, fn, ref: torch.Tensor, reps: int) -> dict:
    """One variant: a first call (where torch.compile compiles), two warm-ups, `reps` timed calls; its
    logits against `ref` (relative error, argmax). A variant that fails reports its error instead."""
    t0 = time.perf_counter()
    try:
        y = run(fn).float()
        for _ in range(2):
            run(fn)
        ms = timed(lambda: run(fn), reps)
    except Exception as e:  # report, keep going with the next variant
        return {"error": f"{type(e).__name__}: {e}"[:500]}
    return {"ms": statistics.median(ms), "min_ms": min(ms), "compile_s": round(time.perf_counter() - t0, 1),
            "rel_err_vs_eager": ((y - ref).norm() / ref.norm()).item(),
            "argmax_equal": bool((y.argmax(-1) == ref.argmax(-1)).all())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--modes", nargs="+", default=["default", "max-autotune-no-cudagraphs"])
    a = ap.parse_args()
    out_dir = Path(os.environ.get("OUT", "."))
    model, tok, pos = random_1b(a.tokens)
    res = {"tokens": a.tokens, "device": torch.cuda.get_device_name(), "torch": torch.__version__, "modes": {}}

    def run(fn):
        with torch.inference_mode():
            return fn(tok, pos, fresh=True, last_only=True)

    ref = run(model).float()
    for _ in range(2):
        run(model)
    res["modes"]["eager"] = {"ms": statistics.median(timed(lambda: run(model), a.reps))}
    for mode in a.modes:
        torch._dynamo.reset()
        fn = torch.compile(model, dynamic=False, **({} if mode == "default" else {"mode": mode}))
        res["modes"][mode] = measure(run, fn, ref, a.reps)
        (out_dir / "prefill_autotune.json").write_text(json.dumps(res, indent=1))
    (out_dir / "prefill_autotune.json").write_text(json.dumps(res, indent=1))
    print(f"{'mode':<30}{'ms':>10}{'compile s':>11}{'rel err':>10}")
    for m, r in res["modes"].items():
        print(f"{m:<30}{r.get('ms', float('nan')):>10.2f}{r.get('compile_s', 0):>11}"
              f"{r.get('rel_err_vs_eager', 0):>10.1e}  {r.get('error', '')}")


if __name__ == "__main__":
    main()
