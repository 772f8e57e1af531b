"""Sampling inside the multi-step decode (issue #6): seeded temperature / top-k / top-p / repetition
penalty requests run K graph steps per host sync and get exactly the tokens of decode_steps=1 and of
the host sampler without graphs (the draws are a function of (seed, token index, vocab index)); a
seeded request's tokens do not depend on its batch. On CPU the graphs are replayed eagerly on the
same static buffers (tests/llm/test_engine_multistep.py); the distribution itself is tested in
tests/llm/test_sampling.py."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llm.engine import Engine, SamplingParams  # noqa: E402
from tests.llm.test_engine import PROMPTS  # noqa: E402
from tests.llm.test_engine_multistep import _by_id, _drain, _engine, _per_request  # noqa: E402


def _mixed(stop: list[str] | None = None) -> dict[str, SamplingParams]:
    return {
        "topkp": SamplingParams(max_tokens=20, temperature=0.8, top_k=50, top_p=0.95, seed=11, ignore_eos=True),
        "greedy": SamplingParams(max_tokens=13, ignore_eos=True),
        "temp": SamplingParams(max_tokens=17, temperature=1.3, seed=12, ignore_eos=True),
        "pen": SamplingParams(max_tokens=18, temperature=1.0, top_p=0.7, repetition_penalty=1.3, seed=13,
                              ignore_eos=True, stop=stop or []),
        "greedy_pen": SamplingParams(max_tokens=9, repetition_penalty=1.5, ignore_eos=True),
        "unseeded": SamplingParams(max_tokens=11, temperature=1.0, top_k=20, ignore_eos=True),
    }


def _host_engine(path, **kw) -> Engine:
    """No graphs at all: every token drawn by llm.sampling.sample on the host's schedule."""
    return Engine.from_pretrained(path, max_batch_size=4, max_context=300, **kw)


def _run_mixed(eng: Engine, params: dict[str, SamplingParams]) -> list:
    """Two requests first, the rest join later (admissions force one-step decodes meanwhile); 4 slots
    for 6 requests, so later ones reuse freed slots (the penalty's `seen` rows must be rebuilt)."""
    toks = {rid: eng.tokenizer.encode(PROMPTS[i % 4]) for i, rid in enumerate(params)}
    names = list(params)
    adds = {0: [(n, toks[n], params[n]) for n in names[:2]], 4: [(names[2], toks[names[2]], params[names[2]])],
            7: [(n, toks[n], params[n]) for n in names[3:]]}
    torch.manual_seed(1234)  # the unseeded request's seed is drawn from torch's default generator
    return _drain(eng, adds)


def test_multi_step_sampling_equals_one_step_and_the_host_sampler(llama_dir):
    base = _host_engine(llama_dir)
    free = _by_id(_run_mixed(base, _mixed()))
    text = base.tokenizer.decode(free["pen"])
    assert len(text) >= 10
    params = _mixed(stop=[text[6:9]])
    res, runs = {}, {}
    for name, eng in (("host", _host_engine(llama_dir)), ("k1", _engine(llama_dir, 1)), ("k8", _engine(llama_dir, 8))):
        outs = _run_mixed(eng, params)
        assert all(len(o.new_token_ids) == 1 for o in outs)
        res[name] = _per_request([(o.request_id, o.new_token_ids, o.text, o.finish_reason, o.num_generated_tokens)
                                  for o in outs])
        runs[name] = eng.graphs and list(zip(eng.graphs.runs, eng.graphs.sampled, strict=True))
        assert not eng.has_unfinished() and eng.num_running == 0
    # K steps per sync happened with sampling rows in the batch; K=1 sampled in the graphs too
    assert any(n == 8 and s for n, s in runs["k8"]), runs["k8"]
    assert max(n for n, _ in runs["k1"]) == 1 and any(s for _, s in runs["k1"])
    assert res["k8"] == res["k1"] == res["host"]
    got = {rid: [r[1][0] for r in rows] for rid, rows in res["k8"].items()}
    pen = res["k8"]["pen"]
    assert pen[-1][3] == "stop" and len(pen) < 18 and got["pen"] == free["pen"][:len(pen)]
    assert all(got[rid] == free[rid] for rid in free if rid != "pen")  # only "pen" has the stop string
    assert got["topkp"] != got["temp"][:len(got["topkp"])]


def test_repetition_penalty_on_the_device_matches_the_host(llama_dir):
    """A strong penalty changes greedy tokens: the graph's `seen` mask must hold prompt + output."""
    ids = [_host_engine(llama_dir).tokenizer.encode(p) for p in PROMPTS[:3]]
    sps = [SamplingParams(max_tokens=24, repetition_penalty=3.0, ignore_eos=True),
           SamplingParams(max_tokens=24, temperature=0.7, repetition_penalty=2.0, seed=3, ignore_eos=True),
           SamplingParams(max_tokens=24, ignore_eos=True)]

    def run(eng):
        for i, (t, sp) in enumerate(zip(ids, sps, strict=True)):
            eng.add_request(f"r{i}", t, sp)
        return _by_id(_drain(eng))

    host, k8 = run(_host_engine(llama_dir)), run(_engine(llama_dir, 8))
    assert k8 == host
    plain = _host_engine(llama_dir).generate_ids([ids[0]], SamplingParams(max_tokens=24, ignore_eos=True))[0]
    assert host["r0"] != plain  # the penalty really acts
    assert len(set(host["r0"])) > len(set(plain))


def test_seeded_request_is_independent_of_its_batch_and_slot(llama_dir):
    sp = SamplingParams(max_tokens=30, temperature=1.0, top_k=40, top_p=0.9, seed=99, ignore_eos=True)
    ids = [_host_engine(llama_dir).tokenizer.encode(p) for p in PROMPTS]
    alone = _engine(llama_dir, 8)
    alone.add_request("s", ids[0], sp)
    ref = _by_id(_drain(alone))["s"]
    eng = _engine(llama_dir, 8)
    others = [SamplingParams(max_tokens=n, temperature=t, seed=s, ignore_eos=True)
              for n, t, s in ((5, 1.5, 1), (40, 0.0, None), (12, 0.6, 2))]
    for i, o in enumerate(others):  # "s" lands in slot 3, its batch changes size as others end
        eng.add_request(f"o{i}", ids[i + 1], o)
    eng.add_request("s", ids[0], sp)
    got = _by_id(_drain(eng))
    assert got["s"] == ref
    assert max(eng.graphs.runs) > 1
    other_seed = _engine(llama_dir, 8)
    other_seed.add_request("s", ids[0], SamplingParams(**{**sp.__dict__, "seed": 100}))
    assert _by_id(_drain(other_seed))["s"] != ref


def test_warmup_captures_sampling_graphs(llama_dir):
    eng = _engine(llama_dir, 8)
    assert eng.warmup([1, 2], max_pos=100, sampling=True) == 4  # greedy + sampling, kv bucket 256
    assert set(eng.graphs.sample_graphs) == {(1, 256, True), (2, 256, True)}
    assert eng.graphs.seen is not None and eng.graphs.seen.shape == (4, eng.model.args.vocab_size)
    ids = eng.tokenizer.encode(PROMPTS[0])
    sp = SamplingParams(max_tokens=6, temperature=0.9, top_k=30, seed=4, ignore_eos=True)
    assert eng.generate_ids([ids], sp) == _host_engine(llama_dir).generate_ids([ids], sp)
    assert set(eng.graphs.sample_graphs) == {(1, 256, True), (2, 256, True)}  # nothing new captured
