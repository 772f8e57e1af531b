"""CUDA: decode graphs give the same greedy tokens as eager decode, and bf16 stays close to transformers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llm.engine import Engine, SamplingParams  # noqa: E402
from tests.llm.test_engine import PROMPTS, collect_tokens, hf_greedy  # noqa: E402

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)


@pytest.mark.parametrize("arch", ["llama", "mixtral", "olmoe"])
def test_cuda_graph_decode_equals_eager_and_fp32_matches_transformers(checkpoints, arch):
    path, hf = checkpoints[arch]
    eng = Engine.from_pretrained(path, device="cuda", dtype="fp32", max_batch_size=4)
    assert eng.graphs is not None
    ids = [eng.tokenizer.encode(p) for p in PROMPTS]
    sp = SamplingParams(max_tokens=16, ignore_eos=True)
    with_graphs = eng.generate_ids(ids, sp)
    assert eng.graphs.graphs, "no decode graph was captured"
    graphs, eng.graphs = eng.graphs, None
    eager = eng.generate_ids(ids, sp)
    eng.graphs = graphs
    assert with_graphs == eager
    refs = [hf_greedy(hf, i, 16) for i in ids]
    assert with_graphs == refs
    # a request that joins mid-way lands in a higher slot while slot 0 is free: parked rows
    eng.add_request("a", ids[0], SamplingParams(max_tokens=3, ignore_eos=True))
    eng.add_request("b", ids[1], sp)
    got = collect_tokens(eng, {})
    assert got["b"] == refs[1]


def test_bf16_greedy_mostly_matches_fp32(checkpoints):
    path, _ = checkpoints["qwen3"]
    e32 = Engine.from_pretrained(path, device="cuda", dtype="fp32")
    e16 = Engine.from_pretrained(path, device="cuda", dtype="bf16")
    ids = [e32.tokenizer.encode(p) for p in PROMPTS]
    sp = SamplingParams(max_tokens=8, ignore_eos=True)
    a, b = e32.generate_ids(ids, sp), e16.generate_ids(ids, sp)
    assert sum(x[0] == y[0] for x, y in zip(a, b, strict=True)) >= 3


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_prefill_graphs_match_eager_prefill(checkpoints, arch):
    path, hf = checkpoints[arch]
    eng = Engine.from_pretrained(path, device="cuda", dtype="fp32", max_batch_size=4, prefill_graphs=True,
                                 max_prefill_tokens_per_step=10)
    ids = [eng.tokenizer.encode(p) for p in PROMPTS]
    got = eng.generate_ids(ids, SamplingParams(max_tokens=10, ignore_eos=True))
    assert eng.prefill_graphs.graphs, "no prefill graph was captured"
    assert got == [hf_greedy(hf, i, 10) for i in ids]


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_prefill_graph_capture_while_slot_0_decodes(checkpoints, arch):
    """A new bucket captured while slot 0 decodes must not touch slot 0's KV rows (issue #6)."""
    path, hf = checkpoints[arch]
    eng = Engine.from_pretrained(path, device="cuda", dtype="fp32", max_batch_size=4, prefill_graphs=True,
                                 max_prefill_tokens_per_step=128)
    ids = [eng.tokenizer.encode(p) for p in PROMPTS]
    long_b = (ids[1] + ids[3]) * 2
    assert len(ids[0]) <= 64 < len(long_b) <= 128
    refs = {"a": hf_greedy(hf, ids[0], 12), "b": hf_greedy(hf, long_b, 6)}
    got: dict[str, list[int]] = {"a": [], "b": []}
    eng.add_request("a", ids[0], SamplingParams(max_tokens=12, ignore_eos=True))
    collect_tokens(eng, got, 3)
    eng.add_request("b", long_b, SamplingParams(max_tokens=6, ignore_eos=True))
    collect_tokens(eng, got)
    assert set(eng.prefill_graphs.graphs) == {64, 128}
    assert got == refs


def test_prefill_graph_replays_survive_allocator_reuse(checkpoints):
    """Replays after the caching allocator has handed out (and filled) lots of small blocks: the
    first version freed its positions buffer after capture, so later replays read garbage."""
    path, _ = checkpoints["llama"]
    eng = Engine.from_pretrained(path, device="cuda", dtype="fp32", max_batch_size=4, prefill_graphs=True)
    pg, model = eng.prefill_graphs, eng.model
    attns = [layer.attention for layer in model.layers]
    ids = [eng.tokenizer.encode(p) for p in PROMPTS]
    with torch.inference_mode():
        assert pg.run(0, ids[0]) is not None and set(pg.graphs) == {64}
        junk = [torch.full((n,), 1 << 40, dtype=torch.long, device="cuda")
                for n in (1, 2, 64, 66, 128, 130, 1024) for _ in range(64)]
        del junk
        got = [pg.run(s, i) for s, i in enumerate(ids)]
        torch.cuda.synchronize()
        rows = [[(a.kv_cache.k[s, :, :len(i)].clone(), a.kv_cache.v[s, :, :len(i)].clone()) for a in attns]
                for s, i in enumerate(ids)]
        for s, i in enumerate(ids):
            n = len(i)
            ref = model(torch.tensor([i], device="cuda"), torch.arange(n, device="cuda")[None],
                        torch.tensor([s], device="cuda"), kv_len=n, fresh=True, last_only=True)[:, -1]
            assert got[s].argmax(-1).item() == ref.argmax(-1).item()
            torch.testing.assert_close(got[s], ref, atol=1e-3, rtol=1e-3)
            for (k, v), a in zip(rows[s], attns, strict=True):  # graph-written rows == eager-written rows
                torch.testing.assert_close(k, a.kv_cache.k[s, :, :n], atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(v, a.kv_cache.v[s, :, :n], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_multi_step_decode_equals_one_step_on_cuda(checkpoints, arch):
    """decode_steps=8 replays the captured graph back to back (token fed back on the device): the
    same tokens and finish reasons as one-step decode, and as transformers in fp32."""
    path, hf = checkpoints[arch]
    ids_sp = [(p, SamplingParams(max_tokens=n, ignore_eos=True)) for p, n in zip(PROMPTS, [20, 13, 7, 18], strict=True)]
    res = {}
    for k in (1, 8):
        eng = Engine.from_pretrained(path, device="cuda", dtype="fp32", max_batch_size=4, decode_steps=k)
        toks = [eng.tokenizer.encode(p) for p, _ in ids_sp]
        for i, (t, (_, sp)) in enumerate(zip(toks, ids_sp, strict=True)):
            eng.add_request(f"r{i}", t, sp)
        got: dict[str, list] = {}
        while eng.has_unfinished():
            for o in eng.step():
                got.setdefault(o.request_id, []).append((o.new_token_ids[0], o.finish_reason))
        res[k] = got
    assert res[8] == res[1]
    for i, (t, (_, sp)) in enumerate(zip(toks, ids_sp, strict=True)):
        assert [x for x, _ in res[8][f"r{i}"]] == hf_greedy(hf, t, sp.max_tokens)


def test_multi_step_bf16_tokens_equal_one_step(checkpoints):
    """In bf16 too (near-ties are common there): both paths replay the same graphs, bit-identical logits."""
    path, _ = checkpoints["qwen3"]
    sp = SamplingParams(max_tokens=40, ignore_eos=True)
    outs = []
    for k in (1, 16):
        eng = Engine.from_pretrained(path, device="cuda", dtype="bf16", max_batch_size=4, decode_steps=k)
        outs.append(eng.generate_ids([eng.tokenizer.encode(p) for p in PROMPTS], sp))
    assert outs[0] == outs[1]


def test_compiled_decode_with_sum_attention_matches_transformers(checkpoints):
    """torch.compile'd decode graphs with the multiply+sum decode attention, multi-step: fp32 greedy
    tokens equal transformers' (one batch bucket, one kv bucket: one compile)."""
    path, hf = checkpoints["llama"]
    eng = Engine.from_pretrained(path, device="cuda", dtype="fp32", max_batch_size=1, max_context=200,
                                 compile=True, decode_steps=8)
    eng.model.set_decode_sum_attention(True)
    ids = eng.tokenizer.encode(PROMPTS[1])
    assert eng.generate_ids([ids], SamplingParams(max_tokens=24, ignore_eos=True)) == [hf_greedy(hf, ids, 24)]


def _mixed_sampling() -> list[SamplingParams]:
    return [SamplingParams(max_tokens=20, temperature=0.8, top_k=50, top_p=0.95, seed=1, ignore_eos=True),
            SamplingParams(max_tokens=13, ignore_eos=True),
            SamplingParams(max_tokens=17, temperature=1.3, seed=2, ignore_eos=True),
            SamplingParams(max_tokens=18, temperature=1.0, top_p=0.7, repetition_penalty=1.3, seed=3, ignore_eos=True)]


def _run_each(eng: Engine, params: list[SamplingParams]) -> dict[str, list]:
    for i, (p, sp) in enumerate(zip(PROMPTS, params, strict=True)):
        eng.add_request(f"r{i}", eng.tokenizer.encode(p), sp)
    got: dict[str, list] = {}
    while eng.has_unfinished():
        for o in eng.step():
            got.setdefault(o.request_id, []).append((o.new_token_ids[0], o.finish_reason))
    return got


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_multi_step_sampling_equals_one_step_and_eager_on_cuda(checkpoints, arch):
    """Seeded temperature/top-k/top-p/penalty rows sampled inside the graphs, 8 steps per sync: the
    tokens of one-step graph decode and of the eager host sampler (fp32: same logits)."""
    path, _ = checkpoints[arch]
    res = {}
    for name, kw in (("eager", dict(cuda_graphs=False)), ("k1", {}), ("k8", dict(decode_steps=8))):
        eng = Engine.from_pretrained(path, device="cuda", dtype="fp32", max_batch_size=4, **kw)
        res[name] = _run_each(eng, _mixed_sampling())
        if name == "k8":
            assert eng.graphs.sample_graphs, "no sampling graph was captured"
    assert res["k8"] == res["k1"] == res["eager"]


def test_multi_step_sampling_bf16_and_compiled_equal_one_step(checkpoints):
    """bf16 with the compiled model and draw: K=1 and K=8 replay the same graphs, same tokens; the
    compiled draw picks what the eager one picks, never outside the top-k/top-p set, at the 1B's
    vocabulary and batch 8 too (where inductor's split scan of the top-p cumsum failed to compile,
    so the warping stays eager), inside a CUDA graph."""
    from llm.sampling import row_params, sample_tokens, seed_key, vocab_hash

    path, _ = checkpoints["llama"]
    # one slot (requests queue): one batch bucket, one kv bucket, so few compiles
    eng = Engine.from_pretrained(path, device="cuda", dtype="bf16", max_batch_size=1, max_context=200,
                                 compile=True)
    outs = {}
    for k in (1, 8):
        eng.decode_steps = k
        outs[k] = _run_each(eng, _mixed_sampling())
    assert outs[8] == outs[1]
    B, V, steps = 8, 128256, 16
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(B, V, device="cuda", generator=gen) * 2
    p = SamplingParams(temperature=0.9, top_k=50, top_p=0.9)
    ints, floats = row_params([p] * B, [seed_key(s) for s in range(B)], [0] * B)
    ints, floats = torch.tensor(ints, device="cuda"), torch.tensor(floats, device="cuda")
    table = vocab_hash(V, torch.device("cuda"))
    eager = []
    for _ in range(steps):
        eager.append(sample_tokens(logits, ints, floats, table))
        ints[0] += 1
    out = torch.zeros(steps, B, dtype=torch.long, device="cuda")
    step = torch.zeros(1, dtype=torch.long, device="cuda")

    def fwd():
        out.index_copy_(0, step, sample_tokens(logits, ints, floats, table, None, True, eng.graphs.draw_fn)[None])
        ints[0] += 1
        step.add_(1)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fwd()  # compiles
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fwd()
    ints[0].fill_(0)
    step.zero_()
    for _ in range(steps):
        g.replay()
    eager = torch.stack(eager)
    assert (eager == out).float().mean() > 0.99
    kth = logits.topk(50, -1).values[:, -1:]
    assert (logits.gather(1, out.T) >= kth).all()
    assert len(set(out[:, 0].tolist())) > 1  # successive n draw different tokens


def test_compiled_prefill_bucket_matches_eager_and_transformers(tmp_path):
    """compile_prefill=True: a 2,100-token prompt runs through the torch.compile'd 4,096-token
    prefill bucket; fp32 greedy tokens equal the eager engine's and transformers'."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    hf = LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    ids = torch.randint(3, 512, (2100,), generator=torch.Generator().manual_seed(1)).tolist()
    sp = SamplingParams(max_tokens=12, ignore_eos=True)
    eng = Engine.from_pretrained(tmp_path, device="cuda", dtype="fp32", max_batch_size=1, max_context=4096,
                                 max_prefill_tokens_per_step=4096, prefill_graphs=True, compile_prefill=True)
    got = eng.generate_ids([ids], sp)
    assert eng.prefill_graphs.compiled is not None and eng.prefill_graphs.graphs, "no compiled prefill ran"
    eager = Engine.from_pretrained(tmp_path, device="cuda", dtype="fp32", max_batch_size=1, max_context=4096,
                                   max_prefill_tokens_per_step=4096, cuda_graphs=False)
    assert got == eager.generate_ids([ids], sp)
    assert got == [hf_greedy(hf, ids, 12)]
