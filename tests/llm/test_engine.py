"""Engine behaviour: greedy parity with transformers.generate, continuous batching, chunked
prefill, abort, stop conditions, callbacks, threads."""

from __future__ import annotations

import copy
import threading

import pytest

torch = pytest.importorskip("torch")

from llm.cuda_graphs import DecodeGraphs, PrefillGraphs  # noqa: E402
from llm.engine import Engine, PromptTooLongError, SamplingParams  # noqa: E402

PROMPTS = ["turn the lights on", "what time is it? set a timer for ten", "open", "stop the music in the kitchen"]


def hf_greedy(hf, ids, n):
    # no EOS at all (min_new_tokens would instead forbid EOS, changing the argmax)
    cfg = copy.deepcopy(hf.generation_config)
    cfg.update(eos_token_id=[], max_new_tokens=n, do_sample=False, pad_token_id=0)
    out = hf.generate(torch.tensor([ids]), generation_config=cfg)
    return out[0, len(ids):].tolist()


def collect_tokens(eng, got: dict[str, list[int]], steps: int | None = None) -> dict[str, list[int]]:
    """Run `steps` engine steps (None: until none is unfinished); add each request's new tokens to `got`."""
    n = 0
    while (eng.has_unfinished() if steps is None else n < steps):
        for o in eng.step():
            got.setdefault(o.request_id, []).extend(o.new_token_ids)
        n += 1
    return got


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mixtral", "olmoe", "qwen2_moe"])
def test_greedy_generation_matches_transformers_batched_and_unbatched(checkpoints, arch):
    path, hf = checkpoints[arch]
    eng = Engine.from_pretrained(path, max_batch_size=4, max_prefill_tokens_per_step=64)
    ids = [eng.tokenizer.encode(p) for p in PROMPTS]
    sp = SamplingParams(max_tokens=20, ignore_eos=True)
    refs = [hf_greedy(hf, i, 20) for i in ids]
    assert eng.generate_ids(ids, sp) == refs  # batched, prompts of different lengths
    for i, ref in zip(ids, refs, strict=True):
        assert eng.generate_ids([i], sp) == [ref]  # one at a time
    assert not eng.has_unfinished() and eng.num_running == 0


def test_chunked_prefill_and_late_joiners_give_the_same_tokens(checkpoints):
    path, hf = checkpoints["mixtral"]
    eng = Engine.from_pretrained(path, max_batch_size=3, max_prefill_tokens_per_step=5)
    ids = [eng.tokenizer.encode(p) for p in PROMPTS]
    sp = SamplingParams(max_tokens=12, ignore_eos=True)
    got: dict[str, list[int]] = {}
    eng.add_request("a", ids[1], sp)
    steps, prefill_only_steps = 0, 0
    while eng.has_unfinished():
        if steps == 2:
            eng.add_request("b", ids[0], sp)  # joins while "a" is still prefilling (budget 5/step)
        if steps == 6:
            eng.add_request("c", ids[3], sp)
            eng.add_request("d", ids[2], sp)  # waits: only 3 slots
        outs = eng.step()
        prefill_only_steps += not outs
        for o in outs:
            got.setdefault(o.request_id, []).extend(o.new_token_ids)
        steps += 1
        assert steps < 200
    assert prefill_only_steps >= 3  # the 16-token prompt needed several chunks
    for rid, i in {"a": ids[1], "b": ids[0], "c": ids[3], "d": ids[2]}.items():
        assert got[rid] == hf_greedy(hf, i, 12), rid


def test_outputs_stream_one_token_per_step_and_report_counts(llama_dir):
    eng = Engine.from_pretrained(llama_dir, max_batch_size=2)
    ids = eng.tokenizer.encode("open the door")
    seen = []
    eng.add_request("r", ids, SamplingParams(max_tokens=5, ignore_eos=True), callback=seen.append)
    outs = []
    while eng.has_unfinished():
        outs += eng.step()
    assert [len(o.new_token_ids) for o in outs] == [1] * 5
    assert [o.num_generated_tokens for o in outs] == [1, 2, 3, 4, 5]
    assert all(o.num_prompt_tokens == len(ids) for o in outs)
    assert [o.finished for o in outs] == [False] * 4 + [True] and outs[-1].finish_reason == "length"
    assert seen == outs  # the callback saw exactly the same outputs


def test_eos_and_stop_token_ids_finish_with_stop(llama_dir):
    eng = Engine.from_pretrained(llama_dir)
    ids = eng.tokenizer.encode("turn the lights on")
    free = eng.generate_ids([ids], SamplingParams(max_tokens=8, ignore_eos=True))[0]
    stop_at = free[3]
    first = free.index(stop_at)
    eng.add_request("s", ids, SamplingParams(max_tokens=8, stop_token_ids=[stop_at]))
    outs = []
    while eng.has_unfinished():
        outs += eng.step()
    assert len(outs) == first + 1 and outs[-1].finish_reason == "stop"
    eng.eos_ids = {stop_at}
    assert eng.generate_ids([ids], SamplingParams(max_tokens=8)) == [free[:first + 1]]


def test_stop_strings_cut_the_text(llama_dir):
    eng = Engine.from_pretrained(llama_dir)
    sp = SamplingParams(max_tokens=12, ignore_eos=True, temperature=1.0, seed=3)
    full = eng.generate(["open the door"], sp)[0]
    assert len(full) >= 6
    stop = full[3:5]
    cut = eng.generate(["open the door"], SamplingParams(**{**sp.__dict__, "stop": [stop]}))[0]
    assert cut == full[:full.index(stop)]
    # the streamed text deltas add up to the same cut text
    eng.add_request("t", eng.tokenizer.encode("open the door"), SamplingParams(**{**sp.__dict__, "stop": [stop]}))
    text = ""
    while eng.has_unfinished():
        for o in eng.step():
            text += o.text
            last = o
    assert text == cut and last.finish_reason == "stop"


def test_seeded_sampling_is_reproducible_and_independent_of_batch(llama_dir):
    eng = Engine.from_pretrained(llama_dir, max_batch_size=4)
    ids = [eng.tokenizer.encode(p) for p in PROMPTS[:3]]
    sp = SamplingParams(max_tokens=15, temperature=1.0, top_k=50, top_p=0.9, seed=7, ignore_eos=True)
    alone = eng.generate_ids([ids[0]], sp)
    together = eng.generate_ids(ids, sp)
    assert together[0] == alone[0]
    other = eng.generate_ids([ids[0]], SamplingParams(**{**sp.__dict__, "seed": 8}))
    assert other != alone


def test_abort_frees_the_slot_at_once_and_reports_it(llama_dir):
    eng = Engine.from_pretrained(llama_dir, max_batch_size=1)
    ids = eng.tokenizer.encode("play some jazz")
    eng.add_request("long", ids, SamplingParams(max_tokens=100, ignore_eos=True))
    eng.add_request("next", ids, SamplingParams(max_tokens=3, ignore_eos=True))
    for _ in range(3):
        eng.step()
    assert eng.num_running == 1
    assert eng.abort("long") is True
    assert eng.num_running == 0  # freed without waiting for a step
    assert eng.abort("long") is False and eng.abort("nope") is False
    outs = []
    while eng.has_unfinished():
        outs += eng.step()
    assert outs[0].request_id == "long" and outs[0].finish_reason == "abort"
    assert [o.request_id for o in outs[1:]] == ["next"] * 3


def test_prompt_too_long_and_bad_requests_raise(llama_dir):
    eng = Engine.from_pretrained(llama_dir, max_context=32)
    assert eng.max_context == 32
    with pytest.raises(PromptTooLongError) as e:
        eng.add_request("x", list(range(3, 35)), SamplingParams())
    assert isinstance(e.value, ValueError) and "32" in str(e.value) and e.value.num_tokens == 32
    with pytest.raises(ValueError):
        eng.add_request("x", [], SamplingParams())
    with pytest.raises(ValueError):
        eng.add_request("x", [10**6], SamplingParams())
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    eng.add_request("y", list(range(3, 30)), SamplingParams(max_tokens=100, ignore_eos=True))
    with pytest.raises(ValueError):
        eng.add_request("y", [5], SamplingParams())
    outs = []
    while eng.has_unfinished():
        outs += eng.step()
    assert len(outs) == 32 - 27 and outs[-1].finish_reason == "length"  # context is full


def test_step_in_one_thread_while_others_add_and_abort(checkpoints):
    path, hf = checkpoints["llama"]
    eng = Engine.from_pretrained(path, max_batch_size=4, max_prefill_tokens_per_step=8)
    ids = [eng.tokenizer.encode(p) for p in PROMPTS]
    got: dict[str, list[int]] = {}
    finished: dict[str, str] = {}
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            for o in eng.step():
                got.setdefault(o.request_id, []).extend(o.new_token_ids)
                if o.finished:
                    finished[o.request_id] = o.finish_reason

    t = threading.Thread(target=loop)
    t.start()
    try:
        for k in range(12):
            eng.add_request(f"r{k}", ids[k % 4], SamplingParams(max_tokens=10, ignore_eos=True))
            if k % 3 == 2:
                eng.abort(f"r{k}")
        deadline = threading.Event()
        for _ in range(600):
            if len(finished) == 12:
                break
            deadline.wait(0.05)
    finally:
        stop.set()
        t.join(10)
    assert len(finished) == 12
    for k in range(12):
        if k % 3 == 2:
            assert finished[f"r{k}"] in ("abort", "length")
        else:
            assert finished[f"r{k}"] == "length"
            assert got[f"r{k}"] == hf_greedy(hf, ids[k % 4], 10)
    assert not eng.has_unfinished() and eng.num_running == 0


class _EagerReplay:
    def __init__(self, fn):
        self.replay = fn


class _GraphsReplayedEagerly(DecodeGraphs):
    """DecodeGraphs' bucketing, parking, token feedback and slot bookkeeping, with the CUDA graph
    replaced by a call of the same function on the same static buffers."""

    def _graph(self, fwd):
        out = fwd().clone()

        def run():
            out.copy_(fwd())

        return _EagerReplay(run), out


@pytest.mark.parametrize("arch", ["llama", "olmoe"])
def test_decode_graph_bookkeeping_parks_rows_and_matches_transformers(checkpoints, arch):
    path, hf = checkpoints[arch]
    eng = Engine.from_pretrained(path, max_batch_size=4, max_context=300)
    eng.graphs = _GraphsReplayedEagerly(eng.model, 4, eng.cache_len)
    ids = [eng.tokenizer.encode(p) for p in PROMPTS]
    refs = [hf_greedy(hf, i, 12) for i in ids]
    got: dict[str, list[int]] = {}
    eng.add_request("short", ids[0], SamplingParams(max_tokens=2, ignore_eos=True))
    eng.add_request("b", ids[1], SamplingParams(max_tokens=12, ignore_eos=True))
    steps = 0
    while eng.has_unfinished():
        if steps == 4:  # slot 0 is free again: "c" takes it while "b" decodes in slot 1
            eng.add_request("c", ids[3], SamplingParams(max_tokens=12, ignore_eos=True))
        for o in eng.step():
            got.setdefault(o.request_id, []).extend(o.new_token_ids)
        steps += 1
    assert got["short"] == refs[0][:2] and got["b"] == refs[1] and got["c"] == refs[3]
    assert {b for b, _ in eng.graphs.graphs} >= {2} and {k for _, k in eng.graphs.graphs} == {256}


class _PrefillReplayedEagerly(PrefillGraphs):
    """PrefillGraphs' padding and buffers, with the CUDA graph replaced by a call."""

    def _capture(self, L):
        tok = torch.zeros(1, L, dtype=torch.long)
        slot, last = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        out = torch.empty(1, self.model.args.vocab_size)

        def run():
            pos = torch.arange(L)[None]
            out.copy_(self.model(tok, pos, slot, kv_len=L, fresh=True, logits_index=last)[:, 0])

        return _EagerReplay(run), tok, slot, last, out


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_padded_prefill_graphs_give_the_same_tokens(checkpoints, arch):
    path, hf = checkpoints[arch]
    eng = Engine.from_pretrained(path, max_batch_size=4, max_context=300, max_prefill_tokens_per_step=10)
    eng.prefill_graphs = _PrefillReplayedEagerly(eng.model, eng.cache_len, min_len=8)
    ids = [eng.tokenizer.encode(p) for p in PROMPTS]  # 16 tokens: a padded first chunk, then eager
    sp = SamplingParams(max_tokens=10, ignore_eos=True)
    assert eng.generate_ids(ids, sp) == [hf_greedy(hf, i, 10) for i in ids]
    assert set(eng.prefill_graphs.graphs) == {8, 16}
