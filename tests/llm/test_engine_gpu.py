"""CUDA: decode graphs give the same greedy tokens as eager decode, and bf16 stays close to transformers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llm.engine import Engine, SamplingParams  # noqa: E402
from tests.llm.test_engine import PROMPTS, hf_greedy  # noqa: E402

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
    got = {}
    while eng.has_unfinished():
        for o in eng.step():
            got.setdefault(o.request_id, []).extend(o.new_token_ids)
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
