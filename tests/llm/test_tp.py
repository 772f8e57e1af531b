"""Tensor parallelism on CPU (gloo, spawned ranks): TP logits equal single-device logits."""

from __future__ import annotations

import pytest
import torch

from llm.parallel.launch import run_ranks

pytestmark = pytest.mark.timeout(240)


def small_args(kind: str, n_kv_heads: int = 4):
    from llm.model import ModelArgs
    from llm.moe import MoEArgs

    args = ModelArgs(model_type="llama", vocab_size=250, dim=64, n_layers=2, n_heads=8,
                     n_kv_heads=n_kv_heads, head_dim=8, intermediate_size=96, max_position_embeddings=128)
    if kind == "dense_bias":
        # biases on qkv (column-parallel) and on o and the MLP (row-parallel: added once after the sum)
        args.attention_bias = args.o_bias = args.mlp_bias = True
        args.tie_word_embeddings = True
    elif kind == "moe":
        args.model_type = "qwen2_moe"
        args.attention_bias = True
        args.moe = MoEArgs(num_experts=4, top_k=2, intermediate_size=48, norm_topk_prob=False,
                           shared_intermediate_size=32)
        args.moe_layers = [0, 1]
    elif kind == "qk_norm":
        args.model_type, args.qk_norm = "qwen3", "head"
    return args


def build(kind: str, seed: int, n_kv_heads: int = 4):
    from llm.model import Transformer

    torch.manual_seed(seed)
    model = Transformer(small_args(kind, n_kv_heads))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def run_model(model, tokens: torch.Tensor, n_decode: int = 2) -> torch.Tensor:
    """Prefill logits then greedy decode logits (KV-cache path), concatenated along the sequence."""
    B, S = tokens.shape
    model.setup_caches(B, S + n_decode + 1)
    pos = torch.arange(S).expand(B, S)
    outs = [model(tokens, pos, fresh=True)]
    for t in range(n_decode):
        nxt = outs[-1][:, -1:].argmax(-1)
        outs.append(model(nxt, torch.full((B, 1), S + t), kv_len=S + t + 1))
    return torch.cat(outs, dim=1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _equal_logits_worker(rank: int, world: int, kinds: list[tuple[str, int]]) -> dict:
    from llm.parallel.tp import apply_tp

    out = {}
    for kind, hk in kinds:
        tokens = torch.randint(0, 250, (2, 11), generator=torch.Generator().manual_seed(7))
        model = build(kind, seed=3, n_kv_heads=hk)
        with torch.no_grad():
            ref = run_model(model, tokens)
            apply_tp(model)
            got = run_model(model, tokens)
        assert model.layers[0].attention.n_local_heads == 8 // world
        out[f"{kind}/kv{hk}"] = _rel(got, ref)
    return out


KINDS = [("dense", 4), ("dense_bias", 4), ("moe", 4), ("qk_norm", 2)]


@pytest.mark.parametrize("world", [2, 4])
def test_tp_logits_equal_single_device(world):
    """TP=2 and TP=4 (gloo) logits of prefill and decode match single-device fp32 logits."""
    res = run_ranks(_equal_logits_worker, world, KINDS)
    for rank_res in res:
        assert set(rank_res) == {f"{k}/kv{h}" for k, h in KINDS}
        for name, err in rank_res.items():
            assert err <= 1e-5, f"world={world} {name}: relative error {err:.2e}"


def _quant_model_worker(rank: int, world: int) -> dict:
    from llm.parallel import comm
    from llm.parallel.quant_comm import Calibration, QuantAllReduce, QuantCommConfig, RangeRecorder
    from llm.parallel.tp import apply_tp

    model = build("dense", seed=5)
    tokens = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        apply_tp(model)
        ref = run_model(model, tokens)
        rec = RangeRecorder()
        comm.set_observer(rec)
        for s in range(3):
            calib_tokens = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(100 + s))
            run_model(model, calib_tokens, n_decode=0)
        comm.set_observer(None)
        cal = Calibration(rec.gather(), tp=world, n_prompts=6)
        res = {}
        for mode in ("one_shot", "two_shot"):
            comm.set_quantizer(QuantAllReduce(QuantCommConfig(group_size=16, outlier_div=16, mode=mode,
                                                              min_bytes=0), cal))
            comm.stats.clear()
            got = run_model(model, tokens)
            res[mode] = (_rel(got, ref), comm.stats["quant_calls"], got)
        comm.set_quantizer(None)
    assert sorted(cal.ranges) == [f"layers.{i}.{k}" for i in range(2) for k in ("attn", "mlp")]
    return res


def test_tp_quantized_model_close_and_ranks_agree():
    """With quantized reductions the TP model stays close to exact TP and every rank sees the same logits."""
    res = run_ranks(_quant_model_worker, 2)
    for mode in ("one_shot", "two_shot"):
        err, calls, logits0 = res[0][mode]
        assert calls == 2 * 2 * 3, "every reduction (2 layers x 2 sites x 3 forwards) takes the low-bit path"
        # 4-bit codes (15 levels per group) through 4 reductions of a random model: a few % of the max logit
        assert 0 < err < 0.25, f"{mode}: relative logit error {err}"
        assert torch.equal(logits0, res[1][mode][2]), f"{mode}: ranks disagree"


def test_tp_rejects_world_size_not_dividing_heads():
    """Sharding fails before any collective, with the reason (no process group needed)."""
    from llm.parallel.state import TPState
    from llm.parallel.tp import TPUnsupportedError, apply_tp

    with pytest.raises(TPUnsupportedError, match="not divisible by 3"):
        apply_tp(build("dense", seed=0), state=TPState(rank=0, world_size=3))
    with pytest.raises(TPUnsupportedError, match="whole projection"):
        model = build("dense", seed=0)
        model.layers[0].attention.qk_norm = "full"
        apply_tp(model, state=TPState(rank=1, world_size=2))
