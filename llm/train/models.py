"""The two default model shapes, as standard transformers configurations."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

from llm.train.tokenizer import BOS, END, PAD

MAX_POSITIONS = 8192
ROPE_THETA = 500_000.0  # large base: 8k positions stay well inside the slowest rotation


def _common(tok, hidden: int, layers: int) -> dict:
    return dict(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 128), head_dim=64,
        max_position_embeddings=MAX_POSITIONS, rope_theta=ROPE_THETA, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=tok.token_to_id(BOS), eos_token_id=tok.token_to_id(END),
        pad_token_id=tok.token_to_id(PAD), initializer_range=0.02, attention_dropout=0.0,
    )


def dense_config(tok, hidden: int = 256, layers: int = 6, ffn: int = 576) -> LlamaConfig:
    """Llama-shaped dense decoder (GQA 4:2, SwiGLU, tied embeddings), ~5.9M parameters by default."""
    return LlamaConfig(intermediate_size=ffn, **_common(tok, hidden, layers))


def moe_config(tok, hidden: int = 256, layers: int = 4, ffn: int = 112, experts: int = 8,
               top_k: int = 2) -> MixtralConfig:
    """Mixtral-shaped MoE decoder (8 experts, top-2), ~5.6M parameters by default.

    The shipped shape (4 layers, experts of 112). With layers=6, ffn=64 it has the dense model's
    depth and attention, so `trainer.warm_start` can copy them (scripts/gpu/train_llm.sh STAGE=moe).
    """
    return MixtralConfig(intermediate_size=ffn, num_local_experts=experts, num_experts_per_tok=top_k,
                         router_aux_loss_coef=0.01, sliding_window=None, **_common(tok, hidden, layers))


def build(kind: str, tok, **shape) -> LlamaForCausalLM | MixtralForCausalLM:
    """A freshly initialised model of `kind` ("dense" or "moe") for tokenizer `tok`."""
    if kind == "dense":
        return LlamaForCausalLM(dense_config(tok, **shape))
    if kind == "moe":
        return MixtralForCausalLM(moe_config(tok, **shape))
    raise ValueError(f"unknown model kind {kind!r}; expected 'dense' or 'moe'")
