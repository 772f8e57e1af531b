"""Optional Hopper/Blackwell prefill kernels written in CuTe DSL: FlashAttention-4's causal attention and
quack's GEMM with the SwiGLU product in its epilogue (issue #6, long-prompt prefill).

Neither package is a dependency: `pip install flash-attn-4 quack-kernels` (they bring nvidia-cutlass-dsl),
then `enable(model)` swaps them in where they apply and reports what it did. Without them, on CPUs and on
GPUs older than sm90 the model keeps SDPA and cuBLAS; nothing else changes.

- Attention: only the fresh-prompt path (whole prompts from position 0, causal, no KV read), the one
  that dominates a long prefill. FA4 takes the model's [B, S, H, D] layout and GQA as they are.
- SwiGLU: `w2(silu(w1 x) * w3 x)` becomes one GEMM against [w1; w3] whose epilogue writes only
  silu(gate) * up, so the [M, 2I] pre-activation never reaches memory and the separate pointwise pass
  over it is gone (per token and layer 6I bytes of traffic fewer). w1 and w3 become views of the
  concatenated weight (no copy kept). Used from `FeedForward.fused_min_tokens` rows (512), where the GEMM
  is large; decode keeps cuBLAS.

Both are registered as torch custom ops, so torch.compile treats them as single opaque calls and
CUDA graphs capture their launches. References: `attention_ref` / `swiglu_ref` below are what they replace.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _import_fa4():
    from flash_attn.cute import flash_attn_func

    return flash_attn_func


def _import_quack():
    from quack.gemm_interface import gemm_gated

    return gemm_gated


def status(device: torch.device | str | None = None, dtype: torch.dtype | None = None,
           head_dim: int | None = None) -> dict[str, str]:
    """{"attention": "fa4" | reason not, "swiglu": "quack" | reason not} for this process, device and
    (when given) the model's dtype and head size."""
    out = {}
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda" or not torch.cuda.is_available():
        return {"attention": "not a CUDA device", "swiglu": "not a CUDA device"}
    major = torch.cuda.get_device_capability(dev)[0]
    if major < 9:
        return {"attention": f"sm{major}x: needs sm90+", "swiglu": f"sm{major}x: needs sm90+"}
    if dtype is not None and dtype not in (torch.bfloat16, torch.float16):
        return {"attention": f"{dtype}: needs bf16 or fp16", "swiglu": f"{dtype}: needs bf16 or fp16"}
    for key, name, imp in (("attention", "fa4", _import_fa4), ("swiglu", "quack", _import_quack)):
        try:
            imp()
            out[key] = name
        except Exception as e:  # ImportError, or a broken install raising anything at import
            out[key] = f"unavailable ({type(e).__name__}: {str(e)[:120]})"
    if head_dim is not None and (head_dim % 8 or not 8 <= head_dim <= 256) and out["attention"] == "fa4":
        out["attention"] = f"head_dim {head_dim}: FlashAttention-4 takes multiples of 8 up to 256"
    return out


@torch.library.custom_op("wakeline::fa4_causal_attention", mutates_args=(), device_types="cuda")
def fa4_causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """q [B, S, H, D], k/v [B, S, Hk, D] (H a multiple of Hk) -> [B, S, H, D], causal."""
    out = _import_fa4()(q, k, v, softmax_scale=scale, causal=True)
    return out[0] if isinstance(out, tuple) else out


@fa4_causal_attention.register_fake
def _(q, k, v, scale):
    return torch.empty_like(q)


def attention_ref(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """What `fa4_causal_attention` computes, through SDPA: same layouts."""
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                       scale=scale, enable_gqa=q.shape[2] != k.shape[2])
    return y.transpose(1, 2)


@torch.library.custom_op("wakeline::swiglu_gemm", mutates_args=(), device_types="cuda")
def swiglu_gemm(x: Tensor, w13: Tensor, tuned: bool = False) -> Tensor:
    """x [M, D], w13 [2I, D] = [w1; w3] -> silu(x @ w1.T) * (x @ w3.T) [M, I] in one GEMM.

    tuned: quack's autotuner picks the tile config, once per distinct shape (each new M costs a
    sweep of compiles and timings, so not for serving arbitrary prompt lengths); else its heuristic
    config for the shape."""
    _, post = _import_quack()(x, w13.T, activation="swiglu", store_preact=False, concat_layout=("B",),
                              tuned=tuned)
    return post


@swiglu_gemm.register_fake
def _(x, w13, tuned=False):
    return x.new_empty(x.shape[0], w13.shape[0] // 2)


def swiglu_ref(x: Tensor, w13: Tensor) -> Tensor:
    """What `swiglu_gemm` computes: bytes moved M*D*2 + 2I*D*2 in, M*2I*2 out and back, M*I*2 out."""
    g, u = (x @ w13.T).chunk(2, dim=-1)
    return F.silu(g) * u


def fuse_ffn_weights(ff) -> None:
    """Make ff.w1 / ff.w3 views of one [2I, D] tensor (ff.w13) without keeping a second copy."""
    w1, w3 = ff.w1.weight, ff.w3.weight
    w13 = torch.cat([w1.detach(), w3.detach()], dim=0)
    i = w1.shape[0]
    ff.w1.weight = torch.nn.Parameter(w13[:i], requires_grad=False)
    ff.w3.weight = torch.nn.Parameter(w13[i:], requires_grad=False)
    ff.w13 = w13


def enable(model, attention: bool = True, swiglu: bool = True) -> dict[str, str]:
    """Swap in what is available for `model` (a built llm.model.Transformer on its device); returns
    {"attention": ..., "swiglu": ...}: the kernel used, or why not."""
    p = next(model.parameters())
    st = status(p.device, p.dtype, model.args.head_dim)
    use_attn = attention and st["attention"] == "fa4"
    use_ffn = swiglu and st["swiglu"] == "quack"
    for layer in model.layers:
        if use_attn:
            layer.attention.prefill_attention = fa4_causal_attention
        ff = layer.feed_forward
        if use_ffn and hasattr(ff, "w13_fused") and ff.w1.bias is None:  # dense SwiGLU layers (not MoE)
            if ff.w13 is None:
                fuse_ffn_weights(ff)
            ff.w13_fused = swiglu_gemm
    if not attention:
        st["attention"] = "off"
    if not swiglu:
        st["swiglu"] = "off"
    return st
