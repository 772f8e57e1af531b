"""Issue #6, 8k prefill: what FlashAttention-4 and quack's SwiGLU-epilogue GEMM (llm/kernels/cute_prefill.py)
do to one 8,192-token forward of the Llama-3.2-1B shape (random bf16 weights), eager and torch.compile'd,
each alone and together. Also checks both ops against their torch references on irregular shapes.
Writes $OUT/prefill_cute.json and prints a table.

    python scripts/gpu/prefill_cute.py [--tokens 8192] [--reps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]
from prefill_autotune import measure, random_1b  # noqa: E402  (same model, same measurement)

from llm.kernels import cute_prefill as cp  # noqa: E402


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def op_checks() -> list[dict]:
    rows = []
    g = torch.Generator(device="cuda").manual_seed(1)
    for b, s, h, hk, d in [(1, 1823, 32, 8, 64), (2, 777, 16, 16, 128), (1, 8192, 32, 8, 64)]:
        q, k, v = (torch.randn(b, s, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for n in (h, hk, hk))
        y = cp.fa4_causal_attention(q, k, v, d ** -0.5)
        ref = cp.attention_ref(q.double(), k.double(), v.double(), d ** -0.5)
        rows.append({"op": "fa4", "shape": [b, s, h, hk, d], "rel_err": rel(y, ref),
                     "sdpa_bf16_rel_err": rel(cp.attention_ref(q, k, v, d ** -0.5), ref)})
    for m, dm, i in [(1823, 2048, 8192), (8192, 2048, 8192), (600, 1024, 2816)]:
        x = torch.randn(m, dm, device="cuda", dtype=torch.bfloat16, generator=g)
        w = torch.randn(2 * i, dm, device="cuda", dtype=torch.bfloat16, generator=g) * dm ** -0.5
        y = cp.swiglu_gemm(x, w)
        ref = cp.swiglu_ref(x.double(), w.double())
        rows.append({"op": "swiglu", "shape": [m, dm, i], "rel_err": rel(y, ref),
                     "torch_bf16_rel_err": rel(cp.swiglu_ref(x, w), ref)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    out_dir = Path(os.environ.get("OUT", "."))
    res = {"tokens": a.tokens, "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    res["status"] = cp.status("cuda")
    print(res["status"], flush=True)
    res["ops"] = op_checks()
    for r in res["ops"]:
        print(json.dumps(r), flush=True)
    model, tok, pos = random_1b(a.tokens)
    cp.enable(model)
    fns = [(lay.attention, lay.feed_forward) for lay in model.layers]

    def tuned_swiglu(x, w13):
        return cp.swiglu_gemm(x, w13, tuned=True)

    def setv(attn: bool, ffn) -> None:
        for at, ff in fns:
            at.prefill_attention = cp.fa4_causal_attention if attn else None
            ff.w13_fused = (tuned_swiglu if ffn == "tuned" else cp.swiglu_gemm) if ffn else None

    def run(fn):
        with torch.inference_mode():
            return fn(tok, pos, fresh=True, last_only=True)

    setv(False, False)
    ref = run(model).float()
    res["variants"] = {}
    for compiled in (False, True):
        for attn, ffn in ((False, False), (True, False), (False, True), (True, True), (True, "tuned")):
            name = ("compiled" if compiled else "eager") + ("+fa4" if attn else "") + ("+swiglu" if ffn else "")
            name += "_tuned" if ffn == "tuned" else ""
            setv(attn, ffn)
            torch._dynamo.reset()
            res["variants"][name] = measure(run, torch.compile(model, dynamic=False) if compiled else model, ref,
                                            a.reps)
            print(name, res["variants"][name], flush=True)
            (out_dir / "prefill_cute.json").write_text(json.dumps(res, indent=1))
    (out_dir / "prefill_cute.json").write_text(json.dumps(res, indent=1))
    print(f"\n{'variant':<28}{'ms':>9}{'min':>9}{'rel err':>10}")
    for m, r in res["variants"].items():
        print(f"{m:<28}{r.get('ms', float('nan')):>9.2f}{r.get('min_ms', float('nan')):>9.2f}"
              f"{r.get('rel_err_vs_eager', 0):>10.1e}  {r.get('error', '')[:80]}")


if __name__ == "__main__":
    main()
