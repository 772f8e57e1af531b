"""llm.kernels.cute_prefill: the model seams it plugs into (CPU, with the torch references in place of
the kernels), the fallback where the kernels cannot run, and on an sm90+ GPU with flash-attn-4 and
quack-kernels installed the kernels themselves against their references and inside the engine."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llm.engine import Engine, SamplingParams  # noqa: E402
from llm.kernels import cute_prefill as cp  # noqa: E402
from llm.loader import load_model  # noqa: E402
from tests.llm.test_engine import PROMPTS  # noqa: E402


def _prefill_logits(model, ids):
    pos = torch.arange(ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
    with torch.inference_mode():
        return model(ids, pos, fresh=True).float()


def _swap_in_references(model) -> dict[str, int]:
    calls = {"attention": 0, "swiglu": 0}

    def attn(*a):
        calls["attention"] += 1
        return cp.attention_ref(*a)

    def swiglu(*a):
        calls["swiglu"] += 1
        return cp.swiglu_ref(*a)

    for layer in model.layers:
        layer.attention.prefill_attention = attn
        cp.fuse_ffn_weights(layer.feed_forward)
        layer.feed_forward.w13_fused = swiglu
        layer.feed_forward.fused_min_tokens = 1
    return calls


def test_seams_with_reference_kernels_give_the_same_logits_and_tokens(checkpoints):
    """The model's two seams (fresh-prompt attention, one-GEMM SwiGLU over [w1; w3]) fed with the torch
    references of the kernels compute what the unmodified model computes (fp32, CPU)."""
    path, _ = checkpoints["llama"]
    plain, _ = load_model(path, device="cpu", dtype="fp32")
    model, _ = load_model(path, device="cpu", dtype="fp32")
    plain.setup_caches(2, 64)
    model.setup_caches(2, 64)
    ids = torch.randint(0, model.args.vocab_size, (2, 37), generator=torch.Generator().manual_seed(3))
    ref = _prefill_logits(plain, ids)
    calls = _swap_in_references(model)
    ff = model.layers[0].feed_forward
    i = ff.w1.weight.shape[0]
    # w1 / w3 are views of w13, not copies
    assert ff.w1.weight.data_ptr() == ff.w13.data_ptr()
    assert ff.w3.weight.data_ptr() == ff.w13.data_ptr() + i * ff.w13.shape[1] * ff.w13.element_size()
    got = _prefill_logits(model, ids)
    n = len(model.layers)
    assert calls == {"attention": n, "swiglu": n}
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # decode (one-token steps, the KV read path) is untouched and generation is token for token the same
    sp = SamplingParams(max_tokens=8, ignore_eos=True)
    e_plain = Engine(plain, None, max_batch_size=2, max_context=64)
    e_model = Engine(model, None, max_batch_size=2, max_context=64)
    prompts = [[5, 9, 14, 3, 22], [7, 7, 30]]
    assert e_model.generate_ids(prompts, sp) == e_plain.generate_ids(prompts, sp)


def test_cpu_engine_falls_back_and_says_why(checkpoints):
    path, _ = checkpoints["llama"]
    eng = Engine.from_pretrained(path, device="cpu", dtype="fp32", max_batch_size=2, cute_prefill=True)
    assert eng.cute_prefill == {"attention": "not a CUDA device", "swiglu": "not a CUDA device"}
    for layer in eng.model.layers:
        assert layer.attention.prefill_attention is None and layer.feed_forward.w13_fused is None
    base = Engine.from_pretrained(path, device="cpu", dtype="fp32", max_batch_size=2)
    ids = [eng.tokenizer.encode(p) for p in PROMPTS]
    sp = SamplingParams(max_tokens=6, ignore_eos=True)
    assert eng.generate_ids(ids, sp) == base.generate_ids(ids, sp)


def test_status_names_what_rules_the_kernels_out(monkeypatch):
    """On an sm90 device the dtype and the head size are checked before the packages are imported."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (8, 0))
    assert cp.status("cuda")["attention"] == "sm8x: needs sm90+"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (9, 0))
    assert cp.status("cuda", torch.float32) == {"attention": "torch.float32: needs bf16 or fp16",
                                                  "swiglu": "torch.float32: needs bf16 or fp16"}
    monkeypatch.setattr(cp, "_import_fa4", lambda: None)
    monkeypatch.setattr(cp, "_import_quack", lambda: None)
    assert cp.status("cuda", torch.bfloat16, 64) == {"attention": "fa4", "swiglu": "quack"}
    assert cp.status("cuda", torch.bfloat16, 20)["attention"].startswith("head_dim 20")

    def missing():
        raise ImportError("No module named 'flash_attn'")

    monkeypatch.setattr(cp, "_import_fa4", missing)
    assert cp.status("cuda", torch.bfloat16, 64)["attention"].startswith("unavailable (ImportError")


def _cuda_kernels_ready() -> bool:
    return torch.cuda.is_available() and cp.status("cuda") == {"attention": "fa4", "swiglu": "quack"}


gpu = pytest.mark.gpu
needs_kernels = pytest.mark.skipif(not _cuda_kernels_ready(), reason="needs sm90+ with flash-attn-4 and quack-kernels")


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@gpu
@needs_kernels
@pytest.mark.parametrize("shape", [(1, 1823, 32, 8, 64), (2, 777, 16, 16, 128), (3, 129, 4, 2, 16)])
def test_fa4_attention_matches_fp64_reference(shape):
    b, s, h, hk, d = shape
    g = torch.Generator(device="cuda").manual_seed(s)
    q, k, v = (torch.randn(b, s, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for n in (h, hk, hk))
    ref = cp.attention_ref(q.double(), k.double(), v.double(), d ** -0.5)
    out = torch.full_like(q, float("nan"))
    out.copy_(cp.fa4_causal_attention(q, k, v, d ** -0.5))
    assert torch.isfinite(out).all()
    # as close to the exact result as SDPA's own bf16 kernel is (both ~2e-3)
    assert _rel(out, ref) <= 1.5 * _rel(cp.attention_ref(q, k, v, d ** -0.5), ref) + 1e-4


@gpu
@needs_kernels
@pytest.mark.parametrize("tuned", [False, True])
@pytest.mark.parametrize("shape", [(1823, 2048, 8192), (600, 1024, 2816), (37, 64, 96)])
def test_swiglu_gemm_matches_fp64_reference(shape, tuned):
    m, dm, i = shape
    g = torch.Generator(device="cuda").manual_seed(m)
    x = torch.randn(m, dm, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(2 * i, dm, device="cuda", dtype=torch.bfloat16, generator=g) * dm ** -0.5
    ref = cp.swiglu_ref(x.double(), w.double())
    out = cp.swiglu_gemm(x, w, tuned=tuned)
    assert out.shape == (m, i) and torch.isfinite(out).all()
    # fp32 epilogue: closer to exact than torch's bf16 GEMM + bf16 pointwise (~3.5e-3)
    assert _rel(out, ref) <= _rel(cp.swiglu_ref(x, w), ref) + 1e-4


@gpu
@needs_kernels
def test_engine_with_cute_prefill_matches_sdpa_engine(checkpoints):
    """bf16 engine, kernels swapped in (fused SwiGLU from one row on): prefill logits within bf16 noise
    of the SDPA / cuBLAS engine, same greedy tokens on these far-from-tie checkpoints, eager and through
    the compiled prefill graphs."""
    path, _ = checkpoints["llama"]
    base = Engine.from_pretrained(path, device="cuda", dtype="bf16", max_batch_size=2)
    eng = Engine.from_pretrained(path, device="cuda", dtype="bf16", max_batch_size=2, cute_prefill=True,
                                 prefill_graphs=True)
    assert eng.cute_prefill == {"attention": "fa4", "swiglu": "quack"}
    for layer in eng.model.layers:
        layer.feed_forward.fused_min_tokens = 1
    ids = torch.randint(0, base.model.args.vocab_size, (2, 300), generator=torch.Generator().manual_seed(5)).cuda()
    ref = _prefill_logits(base.model, ids)
    got = _prefill_logits(eng.model, ids)
    assert _rel(got, ref) < 2e-2
    assert (got[:, -1].argmax(-1) == ref[:, -1].argmax(-1)).all()
    prompts = [eng.tokenizer.encode(p) for p in PROMPTS]
    sp = SamplingParams(max_tokens=8, ignore_eos=True)
    assert eng.generate_ids(prompts, sp) == base.generate_ids(prompts, sp)
