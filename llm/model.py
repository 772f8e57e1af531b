"""A plain single-device decoder for the Llama family and its MoE cousins (gpt-fast style).

Covers Llama 2/3 (incl. Llama-3 RoPE scaling), Mistral, Qwen2 (q/k/v bias), Qwen3 (per-head q/k
norm), Mixtral, OLMoE (q/k norm over the whole projection) and Qwen2-MoE (shared expert + gate).

Tensor parallelism is applied to a built model from outside (`llm/parallel/`): it shards `wqkv`,
`w1`, `w3` by columns and `wo`, `w2` by rows and reduces their outputs with forward hooks, so the
per-layer head counts live on each `Attention` as `n_local_heads` / `n_local_kv_heads` and `wqkv`
stays packed as [q; k; v]. Nothing here calls torch.distributed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llm.kv_cache import KVCache
from llm.moe import MoE, MoEArgs

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MixtralForCausalLM": "mixtral",
    "OlmoeForCausalLM": "olmoe",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or one of its options is not implemented here."""


@dataclass
class ModelArgs:
    model_type: str = "llama"
    vocab_size: int = 32000
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    head_dim: int = 128
    intermediate_size: int = 11008
    norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q, k, v (and o when o_bias)
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: str | None = None  # None | "head" (Qwen3) | "full" (OLMoE)
    clip_qkv: float | None = None
    moe: MoEArgs | None = None
    moe_layers: list[int] = field(default_factory=list)  # which layers are MoE (others dense)
    sliding_window: int | None = None  # not implemented: the engine caps its context at it instead

    @classmethod
    def from_hf_config(cls, cfg: dict) -> ModelArgs:
        """Build from a Hugging Face `config.json` dict; raise UnsupportedModelError on what we lack."""
        archs = cfg.get("architectures") or []
        mt = cfg.get("model_type")
        if archs and archs[0] in SUPPORTED_ARCHITECTURES:
            mt = SUPPORTED_ARCHITECTURES[archs[0]]
        if mt not in SUPPORTED_ARCHITECTURES.values():
            raise UnsupportedModelError(
                f"unsupported architecture {archs or mt!r}; supported: {sorted(SUPPORTED_ARCHITECTURES)}"
            )
        act = cfg.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedModelError(f"unsupported activation {act!r} (only SwiGLU/silu)")
        dim, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or dim // n_heads
        n_layers = cfg["num_hidden_layers"]
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", None) or cfg.get("rope_theta", 10000.0)
        rtype = rope.get("rope_type", rope.get("type", "default"))
        if rtype not in ("default", "llama3", "linear"):
            raise UnsupportedModelError(f"unsupported RoPE scaling {rtype!r} (default, linear, llama3)")
        if cfg.get("partial_rotary_factor", 1.0) != 1.0:
            raise UnsupportedModelError("partial rotary embeddings are not supported")
        args = cls(
            model_type=mt,
            vocab_size=cfg["vocab_size"],
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            head_dim=head_dim,
            intermediate_size=cfg.get("intermediate_size", 4 * dim),
            norm_eps=cfg.get("rms_norm_eps", 1e-5),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            rope_theta=float(theta),
            rope_scaling=None if rtype == "default" else {**rope, "rope_type": rtype},
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
        sw = cfg.get("sliding_window")
        if sw and (mt in ("mistral", "mixtral") or cfg.get("use_sliding_window")):
            args.sliding_window = int(sw)
        if mt == "llama":
            args.attention_bias = args.o_bias = bool(cfg.get("attention_bias", False))
            args.mlp_bias = bool(cfg.get("mlp_bias", False))
        elif mt == "qwen2":
            args.attention_bias = True
        elif mt in ("qwen3", "qwen3_moe"):
            args.attention_bias = args.o_bias = bool(cfg.get("attention_bias", False))
            args.qk_norm = "head"
        elif mt == "qwen2_moe":
            args.attention_bias = bool(cfg.get("qkv_bias", True))
        elif mt == "olmoe":
            args.attention_bias = args.o_bias = bool(cfg.get("attention_bias", False))
            args.qk_norm = "full"
            args.clip_qkv = cfg.get("clip_qkv")
        if mt in ("mixtral", "olmoe", "qwen2_moe", "qwen3_moe"):
            n_exp = cfg.get("num_local_experts") or cfg.get("num_experts")
            args.moe = MoEArgs(
                num_experts=n_exp,
                top_k=cfg["num_experts_per_tok"],
                intermediate_size=cfg.get("moe_intermediate_size") or args.intermediate_size,
                norm_topk_prob=True if mt == "mixtral" else bool(cfg.get("norm_topk_prob", False)),
                shared_intermediate_size=cfg.get("shared_expert_intermediate_size") if mt == "qwen2_moe" else None,
                topk_weights_in_model_dtype=mt != "mixtral",
            )
            step = cfg.get("decoder_sparse_step", 1) or 1
            dense_only = set(cfg.get("mlp_only_layers") or [])
            args.moe_layers = [i for i in range(n_layers) if i not in dense_only and (i + 1) % step == 0]
        return args


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # fp32 statistics, cast back before the weight: exactly what HF does
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_inv_freq(args: ModelArgs) -> Tensor:
    """Inverse frequencies [head_dim // 2] in fp32, with linear or Llama-3 scaling applied."""
    d = args.head_dim
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    sc = args.rope_scaling
    if not sc:
        return inv
    if sc["rope_type"] == "linear":
        return inv / sc["factor"]
    factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
    old = sc["original_max_position_embeddings"]
    lo_wl, hi_wl = old / lo, old / hi
    wavelen = 2 * math.pi / inv
    inv_l = torch.where(wavelen > lo_wl, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
    medium = ~(wavelen < hi_wl) * ~(wavelen > lo_wl)
    return torch.where(medium, smoothed, inv_l)


def rope_tables(args: ModelArgs, max_seq: int, device=None) -> tuple[Tensor, Tensor]:
    """cos, sin tables [max_seq, head_dim] in fp32 (rotate-half layout, as HF checkpoints expect)."""
    inv = rope_inv_freq(args).to(device)
    t = torch.arange(max_seq, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv)  # [T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, D]
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: [B, S, H, D]; cos/sin: [B, S, 1, D] already in x's dtype
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        # tensor parallelism rewrites these two after sharding wqkv / wo
        self.n_local_heads, self.n_local_kv_heads = args.n_heads, args.n_kv_heads
        qkv_out = (args.n_heads + 2 * args.n_kv_heads) * args.head_dim
        self.wqkv = nn.Linear(args.dim, qkv_out, bias=args.attention_bias)  # packed [q; k; v]
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=args.o_bias)
        self.qk_norm = args.qk_norm
        if args.qk_norm == "head":
            self.q_norm = RMSNorm(args.head_dim, args.norm_eps)
            self.k_norm = RMSNorm(args.head_dim, args.norm_eps)
        elif args.qk_norm == "full":
            self.q_norm = RMSNorm(args.n_heads * args.head_dim, args.norm_eps)
            self.k_norm = RMSNorm(args.n_kv_heads * args.head_dim, args.norm_eps)
        self.clip_qkv = args.clip_qkv
        self.kv_cache: KVCache | None = None
        self.return_last_attn = False
        self.last_attn: Tensor | None = None  # [B, H, kv_len] when return_last_attn
        # prefill: SDPA with enable_gqa instead of repeated K/V (saves two copies per layer)
        self.prefill_native_gqa = True
        # under torch.compile only: decode attention as multiply + sum (see decode_attention_sum)
        self.decode_sum_attention = False
        # fresh prompts: fn(q, k, v, scale) [B, S, H, D] -> [B, S, H, D] instead of SDPA
        # (llm.kernels.cute_prefill.enable sets FlashAttention-4 here)
        self.prefill_attention = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, input_pos: Tensor, slots: Tensor | None,
                kv_len: int, fresh: bool) -> Tensor:
        B, S, _ = x.shape
        hq, hk, d = self.n_local_heads, self.n_local_kv_heads, self.head_dim
        q, k, v = self.wqkv(x).split([hq * d, hk * d, hk * d], dim=-1)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.clip_qkv is not None:
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        q, k, v = q.view(B, S, hq, d), k.view(B, S, hk, d), v.view(B, S, hk, d)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # [B, S, H, D]
        scale = 1.0 / math.sqrt(d)
        if fresh:
            # whole prompts from position 0: plain causal attention (flash on CUDA), cache written after
            if self.kv_cache is not None:
                self.kv_cache.update(input_pos, slots, k, v)
            keys = k.transpose(1, 2)  # [B, Hk, S, D]
            if self.prefill_attention is not None and S > 1:
                y = self.prefill_attention(q, k, v, scale).transpose(1, 2)  # [B, H, S, D] view
            else:
                keys_r, values = keys, v.transpose(1, 2)
                if hq != hk and not self.prefill_native_gqa:  # SDPA's flash and cuDNN kernels take GQA as is
                    keys_r = keys.repeat_interleave(hq // hk, dim=1)
                    values = values.repeat_interleave(hq // hk, dim=1)
                y = F.scaled_dot_product_attention(q.transpose(1, 2), keys_r, values, is_causal=S > 1, scale=scale,
                                                   enable_gqa=hq != keys_r.shape[1])
        else:
            keys, values = self.kv_cache.update_and_read(input_pos, slots, k, v, kv_len)  # [B, Hk, T, D]
            if S == 1 and self.decode_sum_attention and torch.compiler.is_compiling():
                y = decode_attention_sum(q, keys, values, input_pos, scale)
            else:
                y = grouped_attention(q, keys, values, input_pos, scale)  # [B, H, S, D]
        if self.return_last_attn:
            self.last_attn = last_row_probs(q[:, -1], keys, input_pos[:, -1], scale)
        y = y.transpose(1, 2).reshape(B, S, hq * d)
        return self.wo(y)


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, input_pos: Tensor, scale: float) -> Tensor:
    """Masked GQA attention without repeating K/V: q [B, S, H, D], k/v [B, Hk, T, D] -> [B, H, S, D]."""
    B, S, H, D = q.shape
    Hk, T = k.shape[1], k.shape[2]
    rep = H // Hk
    qg = q.view(B, S, Hk, rep, D).permute(0, 2, 3, 1, 4).reshape(B, Hk, rep * S, D)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scale  # [B, Hk, rep*S, T]
    mask = torch.arange(T, device=q.device)[None, None, :] <= input_pos[:, :, None]  # [B, S, T]
    mask = mask[:, None, None].expand(B, 1, rep, S, T).reshape(B, 1, rep * S, T)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    y = torch.matmul(probs, v)  # [B, Hk, rep*S, D]
    return y.view(B, Hk, rep, S, D).reshape(B, H, S, D)


def decode_attention_sum(q: Tensor, k: Tensor, v: Tensor, input_pos: Tensor, scale: float) -> Tensor:
    """grouped_attention for one query per row, written as broadcast multiply + sum: q [B, 1, H, D],
    k/v [B, Hk, T, D] -> [B, H, 1, D]. Only for torch.compile, which fuses each product into its
    reduction (eagerly it would materialise [B, Hk, rep, T, D]); at batch 1 the two tiny batched
    GEMMs of grouped_attention run as generic cuBLAS kernels of ~5 us each per layer."""
    B, _, H, D = q.shape
    Hk, T = k.shape[1], k.shape[2]
    qg = q.view(B, Hk, H // Hk, 1, D)
    scores = (qg.float() * k[:, :, None].float()).sum(-1) * scale  # [B, Hk, rep, T]
    mask = torch.arange(T, device=q.device)[None, :] <= input_pos  # [B, T]
    scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    y = (probs[..., None].float() * v[:, :, None].float()).sum(-2)  # [B, Hk, rep, D]
    return y.to(v.dtype).view(B, H, 1, D)


def last_row_probs(q: Tensor, k: Tensor, pos: Tensor, scale: float) -> Tensor:
    """Attention probabilities of one query row per sequence (the LazyLLM seam): [B, H, T] fp32."""
    B, H, D = q.shape
    Hk, T = k.shape[1], k.shape[2]
    qg = q.view(B, Hk, H // Hk, D)
    scores = torch.matmul(qg.float(), k.float().transpose(-1, -2)) * scale  # [B, Hk, rep, T]
    mask = torch.arange(T, device=q.device)[None, :] <= pos[:, None]
    scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    return torch.softmax(scores, dim=-1).reshape(B, H, T)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = False):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=bias)  # up
        self.w2 = nn.Linear(hidden, dim, bias=bias)  # down
        # optional one-GEMM SwiGLU fn(x [M, D], w13 [2I, D]) -> [M, I] for calls of >= fused_min_tokens rows
        # (llm.kernels.cute_prefill.enable sets it, and w13 = [w1; w3] with w1 / w3 views of it)
        self.w13_fused = None
        self.w13: Tensor | None = None
        self.fused_min_tokens = 512

    def forward(self, x: Tensor) -> Tensor:
        if self.w13_fused is not None and x.numel() // x.shape[-1] >= self.fused_min_tokens:
            h = self.w13_fused(x.reshape(-1, x.shape[-1]), self.w13)  # [M, I]
            return self.w2(h.view(*x.shape[:-1], h.shape[-1]))
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.attention = Attention(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.is_moe = args.moe is not None and layer_id in args.moe_layers
        if self.is_moe:
            self.feed_forward = MoE(args.dim, args.moe, layer_id)
        else:
            self.feed_forward = FeedForward(args.dim, args.intermediate_size, args.mlp_bias)

    def forward(self, x, cos, sin, input_pos, slots, kv_len, fresh):
        h = x + self.attention(self.attention_norm(x), cos, sin, input_pos, slots, kv_len, fresh)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.max_seq = 0
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    def setup_caches(self, max_batch: int, max_seq: int, dtype: torch.dtype | None = None) -> None:
        """Allocate a slot-based KV cache of `max_batch` slots x `max_seq` positions and RoPE tables."""
        dtype = dtype or self.dtype
        self.max_seq = max_seq
        for layer in self.layers:
            a = layer.attention
            a.kv_cache = KVCache(max_batch, max_seq, a.n_local_kv_heads, a.head_dim, dtype, self.device)
        self.rope_cos, self.rope_sin = rope_tables(self.args, max_seq, self.device)

    def set_decode_sum_attention(self, on: bool) -> None:
        """Decode attention as fused multiply + sum under torch.compile (see decode_attention_sum)."""
        for layer in self.layers:
            layer.attention.decode_sum_attention = on

    def set_return_last_attn(self, on: bool) -> None:
        """Make every attention layer keep its last query row's probabilities in `.last_attn`."""
        for layer in self.layers:
            layer.attention.return_last_attn = on
            layer.attention.last_attn = None

    def forward(self, tokens: Tensor, input_pos: Tensor, slots: Tensor | None = None,
                kv_len: int | None = None, fresh: bool = False, last_only: bool = False,
                logits_index: Tensor | None = None) -> Tensor:
        """Logits for `tokens` [B, S] at positions `input_pos` [B, S].

        `slots` [B] picks each row's KV-cache slot (None: row b uses slot b); keys up to `kv_len`
        are attended (None: the whole cache). `fresh`: every row is a whole prompt starting at
        position 0 (plain causal attention, no cache read). `last_only`: logits of the last
        position only ([B, 1, V]), which is what prefill needs; `logits_index` [B]: logits of that
        position of each row instead ([B, 1, V]; a padded prompt's last real token).
        """
        if self.max_seq == 0:
            raise RuntimeError("call setup_caches() before forward()")
        kv_len = kv_len or self.max_seq
        dtype = self.dtype
        cos = self.rope_cos[input_pos].to(dtype).unsqueeze(2)  # [B, S, 1, D]
        sin = self.rope_sin[input_pos].to(dtype).unsqueeze(2)
        x = self.tok_embeddings(tokens)  # [B, S, dim]
        for layer in self.layers:
            x = layer(x, cos, sin, input_pos, slots, kv_len, fresh)
        if logits_index is not None:
            x = x.gather(1, logits_index.view(-1, 1, 1).expand(-1, 1, x.shape[-1]))
        elif last_only:
            x = x[:, -1:]
        return self.output(self.norm(x)).float()  # [B, S, V]
