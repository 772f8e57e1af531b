"""Logit parity with transformers (fp32, CPU): prefill and 20 decode steps, per architecture."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llm.loader import load_model  # noqa: E402
from llm.moe import set_routing_observer  # noqa: E402
from tests.llm.conftest import ARCHS  # noqa: E402

TOL = 1e-4


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the error relative to the scale of the reference logits."""
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_and_decode_logits_match_transformers(checkpoints, arch):
    path, hf = checkpoints[arch]
    model, _ = load_model(path, dtype="fp32")
    model.setup_caches(2, 128)
    g = torch.Generator().manual_seed(hash(arch) % 1000)
    prompt = torch.randint(3, model.args.vocab_size, (1, 13), generator=g)
    with torch.no_grad():
        out = hf(prompt, use_cache=True)
        ref, past = out.logits, out.past_key_values
        ours = model(prompt, torch.arange(13)[None], fresh=True)
        assert rel_err(ours, ref) <= TOL
        tok = ref[:, -1].argmax(-1, keepdim=True)
        for i in range(20):
            out = hf(tok, past_key_values=past, use_cache=True)
            ref, past = out.logits, out.past_key_values
            pos = 13 + i
            ours = model(tok, torch.tensor([[pos]]), kv_len=pos + 1)
            assert rel_err(ours, ref) <= TOL, f"decode step {i}"
            tok = ref[:, -1].argmax(-1, keepdim=True)


@pytest.mark.parametrize("arch", ["llama", "olmoe", "qwen2_moe"])
def test_chunked_prefill_in_another_slot_matches_one_shot(checkpoints, arch):
    # 100 tokens: MoE layers take the grouped (per-expert) path; the chunks read the cache of slot 1
    path, hf = checkpoints[arch]
    model, _ = load_model(path)
    model.setup_caches(2, 128)
    prompt = torch.randint(3, model.args.vocab_size, (1, 100))
    with torch.no_grad():
        ref = hf(prompt).logits[:, -1]
        slot = torch.tensor([1])
        for a, b in [(0, 37), (37, 80), (80, 100)]:
            last = model(prompt[:, a:b], torch.arange(a, b)[None], slot, kv_len=b, fresh=a == 0, last_only=True)
    assert last.shape == (1, 1, model.args.vocab_size)
    assert rel_err(last[:, 0], ref) <= TOL


def test_batched_rows_of_different_lengths_match_single_rows(checkpoints):
    path, hf = checkpoints["mixtral"]
    model, _ = load_model(path)
    model.setup_caches(3, 64)
    lens = [5, 11, 8]
    prompts = [torch.randint(3, model.args.vocab_size, (1, n)) for n in lens]
    with torch.no_grad():
        for s, p in enumerate(prompts):
            model(p, torch.arange(p.shape[1])[None], torch.tensor([s]), fresh=True, last_only=True)
        nxt = torch.randint(3, model.args.vocab_size, (3, 1))
        pos = torch.tensor(lens)[:, None]
        batched = model(nxt, pos, torch.tensor([0, 1, 2]), kv_len=max(lens) + 1)
        for s, p in enumerate(prompts):
            ref = hf(torch.cat([p, nxt[s:s + 1]], 1)).logits[:, -1]
            assert rel_err(batched[s], ref[0]) <= TOL


def test_last_row_attention_probabilities_match_transformers(checkpoints):
    path, _ = checkpoints["llama"]
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    model, _ = load_model(path)
    model.setup_caches(1, 64)
    model.set_return_last_attn(True)
    prompt = torch.randint(3, model.args.vocab_size, (1, 9))
    with torch.no_grad():
        attn = hf(prompt, output_attentions=True).attentions
        model(prompt[:, :6], torch.arange(6)[None], fresh=True)
        model(prompt[:, 6:], torch.arange(6, 9)[None], kv_len=9)  # from the cache this time
    for layer, ref in zip(model.layers, attn, strict=True):
        probs = layer.attention.last_attn  # [B, H, kv_len]
        assert probs.shape == (1, 4, 9)
        torch.testing.assert_close(probs, ref[:, :, -1], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4))


def test_routing_observer_sees_every_token_of_every_moe_layer(checkpoints):
    path, _ = checkpoints["qwen2_moe"]  # layer 1 is dense (mlp_only_layers)
    model, _ = load_model(path)
    model.setup_caches(1, 32)
    seen = []
    assert set_routing_observer(model, lambda layer, ids: seen.append((layer, ids.clone()))) == 1
    with torch.no_grad():
        model(torch.randint(3, 100, (1, 7)), torch.arange(7)[None], fresh=True)
    assert [s[0] for s in seen] == [0]
    ids = seen[0][1]
    assert ids.shape == (7, 2) and int(ids.max()) < 8
    assert (ids[:, 0] != ids[:, 1]).all()


def test_bf16_logits_stay_close_to_fp32(checkpoints):
    path, _ = checkpoints["qwen3"]
    m32, _ = load_model(path, dtype="fp32")
    m16, _ = load_model(path, dtype="bf16")
    assert m16.output.weight.dtype == torch.bfloat16
    for m in (m32, m16):
        m.setup_caches(1, 32)
    prompt = torch.randint(3, 100, (1, 10))
    with torch.no_grad():
        a = m32(prompt, torch.arange(10)[None], fresh=True)
        b = m16(prompt, torch.arange(10)[None], fresh=True)
    assert rel_err(b, a) < 0.05


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_all_experts_path_for_long_prompts_matches_transformers(checkpoints, arch):
    # the path CUDA prefill takes for tiny experts; forced here on CPU
    path, hf = checkpoints[arch]
    model, _ = load_model(path)
    model.setup_caches(1, 128)
    for m in model.modules():
        if hasattr(m, "dense_max_tokens"):
            m.dense_max_tokens = 10**6
    prompt = torch.randint(3, model.args.vocab_size, (1, 90))
    with torch.no_grad():
        assert rel_err(model(prompt, torch.arange(90)[None], fresh=True), hf(prompt).logits) <= TOL
