"""PrefillGraphs bookkeeping on CPU (issue #6): the real buffers, warm-up and replay plumbing, with
only the CUDA graph recording replaced by a call that reads the same static tensors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llm.cuda_graphs import PrefillGraphs  # noqa: E402
from llm.engine import Engine, SamplingParams  # noqa: E402
from tests.llm.test_engine import PROMPTS, collect_tokens, hf_greedy  # noqa: E402


class _Replay:
    def __init__(self, fwd, out):
        self.fwd, self.out = fwd, out

    def replay(self):
        self.out.copy_(self.fwd())


class _CPUPrefillGraphs(PrefillGraphs):
    """Everything but the recording: `_graph` runs `fwd` now (positions still parked, as the CUDA
    warm-up does) and a replay calls it again on the static buffers."""

    def _graph(self, fwd):
        out = fwd().clone()
        return _Replay(fwd, out), out


class _FailingPrefillGraphs(PrefillGraphs):
    def _graph(self, fwd):
        raise RuntimeError("capture failed on purpose")


def _kv(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(a.kv_cache.k.clone(), a.kv_cache.v.clone()) for a in (layer.attention for layer in model.layers)]


def _engine(checkpoints, arch="llama", **kw) -> Engine:
    path, _ = checkpoints[arch]
    return Engine.from_pretrained(path, max_batch_size=4, max_context=300, **kw)


def test_capture_writes_only_the_spare_position(checkpoints):
    eng = _engine(checkpoints)
    for layer in eng.model.layers:  # a recognisable cache: every slot "in use"
        layer.attention.kv_cache.k.normal_()
        layer.attention.kv_cache.v.normal_()
    before = _kv(eng.model)
    pg = _CPUPrefillGraphs(eng.model, eng.cache_len, min_len=8)
    with torch.inference_mode():
        pg._capture(64)  # the warm-up and the "capture" really run the model
    spare = eng.cache_len - 1
    changed = False
    for (k0, v0), (k1, v1) in zip(before, _kv(eng.model), strict=True):
        assert torch.equal(k0[:, :, :spare], k1[:, :, :spare]) and torch.equal(v0[:, :, :spare], v1[:, :, :spare])
        changed |= not torch.equal(k0[0, :, spare], k1[0, :, spare])
    assert changed, "the warm-up should have written slot 0's spare position"


def test_static_inputs_live_in_the_entry(checkpoints):
    eng = _engine(checkpoints)
    pg = _CPUPrefillGraphs(eng.model, eng.cache_len, min_len=8)
    with torch.inference_mode():
        _, tok, slot, last, _ = pg._capture(16)
    # a CUDA replay reads raw addresses: the positions must stay allocated with what the entry holds
    buf = torch.empty(0, dtype=torch.long).set_(tok.untyped_storage())
    assert buf.numel() == 2 * 16 + 2
    assert buf[16 + 2:].tolist() == list(range(16))
    for t in (slot, last):
        assert t.untyped_storage().data_ptr() == tok.untyped_storage().data_ptr()


def test_run_returns_a_copy_not_the_graph_buffer(checkpoints):
    eng = _engine(checkpoints)
    pg = _CPUPrefillGraphs(eng.model, eng.cache_len, min_len=8)
    with torch.inference_mode():
        a = pg.run(0, [5, 6, 7])
        a_saved = a.clone()
        b = pg.run(1, [9, 10, 11, 12])  # same bucket: same graph, same output buffer
    static = pg.graphs[8][4]
    assert a.data_ptr() != static.data_ptr() and b.data_ptr() != static.data_ptr()
    assert torch.equal(a, a_saved) and not torch.equal(a, b)


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_new_bucket_captured_while_slot_0_decodes(checkpoints, arch):
    """Request a decodes in slot 0 while b's longer prompt makes a new bucket be captured: a's
    tokens must not change (the first version's warm-up overwrote slot 0's first L positions)."""
    path, hf = checkpoints[arch]
    eng = _engine(checkpoints, arch, max_prefill_tokens_per_step=64)
    eng.prefill_graphs = _CPUPrefillGraphs(eng.model, eng.cache_len, min_len=8)
    ids = [eng.tokenizer.encode(p) for p in PROMPTS]
    long_b = ids[1] + ids[3]  # 39 tokens: the 64 bucket
    assert 32 < len(long_b) <= 64
    refs = {"a": hf_greedy(hf, ids[0], 12), "b": hf_greedy(hf, long_b, 6)}
    got: dict[str, list[int]] = {"a": [], "b": []}
    eng.add_request("a", ids[0], SamplingParams(max_tokens=12, ignore_eos=True))
    collect_tokens(eng, got, 3)
    first = set(eng.prefill_graphs.graphs)
    assert first and 64 not in first and len(got["a"]) == 3
    eng.add_request("b", long_b, SamplingParams(max_tokens=6, ignore_eos=True))
    collect_tokens(eng, got)
    assert set(eng.prefill_graphs.graphs) == first | {64}
    assert got == refs


def test_failed_capture_falls_back_to_eager(checkpoints):
    path, hf = checkpoints["llama"]
    eng = _engine(checkpoints)
    eng.prefill_graphs = _FailingPrefillGraphs(eng.model, eng.cache_len, min_len=8)
    ids = [eng.tokenizer.encode(p) for p in PROMPTS[:2]]
    got = eng.generate_ids(ids, SamplingParams(max_tokens=5, ignore_eos=True))
    assert got == [hf_greedy(hf, i, 5) for i in ids]
    assert eng.prefill_graphs.failed and not eng.prefill_graphs.graphs


def test_capture_all_prepares_every_bucket_a_first_chunk_can_use(checkpoints):
    path, hf = checkpoints["llama"]
    eng = _engine(checkpoints, max_prefill_tokens_per_step=40)
    pg = _CPUPrefillGraphs(eng.model, eng.cache_len, min_len=8)
    with torch.inference_mode():
        assert pg.capture_all(40) == 4
    assert set(pg.graphs) == {8, 16, 32, 64}  # 64 holds a 40-token chunk; nothing longer is needed
    eng.prefill_graphs = pg
    ids = [eng.tokenizer.encode(p) for p in PROMPTS]
    got = eng.generate_ids(ids, SamplingParams(max_tokens=6, ignore_eos=True))
    assert got == [hf_greedy(hf, i, 6) for i in ids]
    assert set(pg.graphs) == {8, 16, 32, 64} and not pg.failed  # serving captured nothing new
