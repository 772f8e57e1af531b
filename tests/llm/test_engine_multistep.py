"""Multi-step decode (`Engine(decode_steps=K)`, issue #6): K graph replays feed their token (greedy
or sampled on the device) to the next one, one host sync per K steps, stop conditions applied on the
host afterwards. Every result must equal decode_steps=1: tokens, finish reasons, streamed text,
callbacks, aborts. On CPU the CUDA graph is replaced by a call of the same function on the same
static buffers (token feedback, position advance, ring of sampled tokens all run for real).
Sampled requests: tests/llm/test_engine_sampling.py."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")

from llm.engine import Engine, SamplingParams  # noqa: E402
from tests.llm.test_engine import PROMPTS, _GraphsReplayedEagerly, hf_greedy  # noqa: E402


class _CountingGraphs(_GraphsReplayedEagerly):
    """Records how many steps each back-to-back run took; `during_run` is called inside a run
    (as another thread would act while the device works)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.runs: list[int] = []  # steps of each graph run (one-step runs too)
        self.sampled: list[bool] = []  # whether each run used a sampling graph
        self.during_run = None

    def run_steps(self, slots, tokens, pos, k, sampling=None, reseen=None):
        if self.during_run is not None:
            self.during_run()
        got = super().run_steps(slots, tokens, pos, k, sampling, reseen)
        if got is not None:
            self.runs.append(len(got))
            self.sampled.append(sampling is not None)
        return got


def _engine(path, k: int, min_kv: int = 256, max_steps: int = 64, **kw) -> Engine:
    kw = {"max_batch_size": 4, "max_context": 300, **kw}
    eng = Engine.from_pretrained(path, decode_steps=k, **kw)
    eng.graphs = _CountingGraphs(eng.model, eng.max_batch_size, eng.cache_len, min_kv=min_kv, max_steps=max_steps)
    return eng


def _drain(eng: Engine, adds: dict[int, list] | None = None) -> list:
    """Step until done; `adds` maps a step number to add_request argument tuples."""
    outs, n = [], 0
    while eng.has_unfinished() or (adds and any(s >= n for s in adds)):
        for args in (adds or {}).get(n, []):
            eng.add_request(*args)
        outs += eng.step()
        n += 1
        assert n < 500
    return outs


def _by_id(outs) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {}
    for o in outs:
        got.setdefault(o.request_id, []).extend(o.new_token_ids)
    return got


def _per_request(rows: list[tuple]) -> dict[str, list[tuple]]:
    """Output rows grouped by request id, in order (the interleaving across requests may differ)."""
    got: dict[str, list[tuple]] = {}
    for r in rows:
        got.setdefault(r[0], []).append(r)
    return got


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_multi_step_greedy_equals_one_step_and_transformers(checkpoints, arch):
    path, hf = checkpoints[arch]
    ids = {f"r{i}": (p, SamplingParams(max_tokens=n, ignore_eos=True))
           for i, (p, n) in enumerate(zip(PROMPTS, [20, 13, 7, 18], strict=True))}
    results = {}
    for k in (1, 8):
        eng = _engine(path, k)
        toks = {rid: eng.tokenizer.encode(p) for rid, (p, _) in ids.items()}
        # r0, r1 first; r2, r3 join later (admission and prefill force one-step decodes meanwhile)
        adds = {0: [("r0", toks["r0"], ids["r0"][1]), ("r1", toks["r1"], ids["r1"][1])],
                5: [("r2", toks["r2"], ids["r2"][1])], 9: [("r3", toks["r3"], ids["r3"][1])]}
        outs = _drain(eng, adds)
        results[k] = [(o.request_id, o.new_token_ids, o.finish_reason, o.num_generated_tokens) for o in outs]
        assert all(len(o.new_token_ids) == 1 for o in outs)
        if k == 8:
            assert max(eng.graphs.runs) == 8, eng.graphs.runs  # back-to-back runs really happened
            got = _by_id(outs)
            for rid, (_, sp) in ids.items():
                assert got[rid] == hf_greedy(hf, toks[rid], sp.max_tokens), rid
    assert _per_request(results[8]) == _per_request(results[1])


def test_stop_token_mid_run_discards_the_rest(llama_dir):
    base = _engine(llama_dir, 1)
    ids = base.tokenizer.encode("turn the lights on")
    free = base.generate_ids([ids], SamplingParams(max_tokens=16, ignore_eos=True))[0]
    stop_at = free[5]
    first = free.index(stop_at)
    sp = SamplingParams(max_tokens=16, stop_token_ids=[stop_at], ignore_eos=True)
    eng = _engine(llama_dir, 8)
    eng.add_request("s", ids, sp)
    eng.add_request("free", ids, SamplingParams(max_tokens=16, ignore_eos=True))
    outs = _drain(eng)
    s = [o for o in outs if o.request_id == "s"]
    assert [o.new_token_ids[0] for o in s] == free[:first + 1] and s[-1].finish_reason == "stop"
    assert _by_id(outs)["free"] == free
    assert max(eng.graphs.runs) > 1 and eng.num_running == 0
    # the slot freed mid-run is reusable at once, with a clean result
    assert eng.generate_ids([ids], SamplingParams(max_tokens=16, ignore_eos=True)) == [free]


def test_max_tokens_context_end_and_ring_and_bucket_limits(llama_dir):
    base = _engine(llama_dir, 1, max_context=40)
    prompts = [base.tokenizer.encode(p) for p in PROMPTS]
    sp = SamplingParams(max_tokens=30, ignore_eos=True)
    ref = base.generate_ids(prompts, sp)
    # kv buckets 8, 16, 32, 41: runs must stop at each bucket end; ring of 5 rows: at most 5 steps
    eng = _engine(llama_dir, 16, min_kv=8, max_steps=5, max_context=40)
    assert eng.generate_ids(prompts, sp) == ref
    assert max(eng.graphs.runs) == 5 and {kv for _, kv in eng.graphs.graphs} >= {32, 41}
    lens = [len(p) + len(r) for p, r in zip(prompts, ref, strict=True)]
    assert max(lens) == 40  # some request ran into the context end ("length") inside a run


def test_stop_strings_streamed_text_and_callbacks_are_unchanged(llama_dir):
    base = _engine(llama_dir, 1)
    base.add_request("t", base.tokenizer.encode("open the door"), SamplingParams(max_tokens=14, ignore_eos=True))
    text = "".join(o.text for o in _drain(base))  # the streamed text, as the requests below stream it
    assert len(text) >= 8
    sp = SamplingParams(max_tokens=14, ignore_eos=True, stop=[text[4:7]])
    runs = {}
    for k in (1, 6):
        eng = _engine(llama_dir, k)
        seen = []
        eng.add_request("t", eng.tokenizer.encode("open the door"), sp, callback=seen.append)
        eng.add_request("u", eng.tokenizer.encode("play some jazz"), SamplingParams(max_tokens=9, ignore_eos=True),
                        callback=seen.append)
        outs = _drain(eng)
        assert seen == outs  # one callback per token, in order
        runs[k] = [(o.request_id, o.new_token_ids, o.text, o.finished, o.finish_reason) for o in outs]
        t = [o for o in outs if o.request_id == "t"]
        # streamed text is never taken back: the cut falls at or after the stop string's start
        assert text[:4] in "".join(o.text for o in t) and t[-1].finish_reason == "stop" and len(t) < 14
    assert _per_request(runs[6]) == _per_request(runs[1])


def test_abort_during_a_run_keeps_one_token_then_reports_abort(llama_dir):
    eng = _engine(llama_dir, 8)
    ids = eng.tokenizer.encode("play some jazz")
    ref = _engine(llama_dir, 1).generate_ids([ids], SamplingParams(max_tokens=20, ignore_eos=True))[0]
    eng.add_request("a", ids, SamplingParams(max_tokens=20, ignore_eos=True))
    eng.add_request("b", ids, SamplingParams(max_tokens=20, ignore_eos=True))
    outs = eng.step()  # prefill both: first tokens
    assert len(outs) == 2

    def abort_from_another_thread():
        eng.graphs.during_run = None
        t = threading.Thread(target=eng.abort, args=("b",))
        t.start()
        t.join()

    eng.graphs.during_run = abort_from_another_thread
    outs = eng.step()  # a multi-step run during which "b" is aborted from "another thread"
    assert eng.graphs.runs == [8]
    assert [o.request_id for o in outs].count("b") == 1  # as a one-step decode would have given
    assert [o.request_id for o in outs].count("a") == 8
    rest = _drain(eng)
    assert rest[0].request_id == "b" and rest[0].finish_reason == "abort"
    got = _by_id(outs)
    got["a"] = [ref[0]] + got["a"] + _by_id(rest)["a"]
    assert got["a"] == ref and not eng.has_unfinished() and eng.num_running == 0


def test_waiting_request_with_no_free_slot_does_not_stop_multi_step(llama_dir):
    eng = _engine(llama_dir, 4, max_batch_size=1)
    ids = [eng.tokenizer.encode(p) for p in PROMPTS[:2]]
    sp = SamplingParams(max_tokens=9, ignore_eos=True)
    ref = _engine(llama_dir, 1, max_batch_size=1).generate_ids(ids, sp)
    assert eng.generate_ids(ids, sp) == ref
    assert eng.graphs.runs.count(4) >= 2


def test_decode_steps_must_be_positive(llama_dir):
    with pytest.raises(ValueError, match="decode_steps"):
        Engine.from_pretrained(llama_dir, decode_steps=0)
