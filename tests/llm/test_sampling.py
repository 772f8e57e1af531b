"""The sampler against transformers' logits processors, and its statistics."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llm.sampling import SamplingParams, apply_repetition_penalty, sample, warp  # noqa: E402


def hf_warp(logits, p: SamplingParams):
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    x = logits[None].clone()
    x = TemperatureLogitsWarper(p.temperature)(None, x)
    if p.top_k:
        x = TopKLogitsWarper(p.top_k)(None, x)
    if p.top_p < 1:
        x = TopPLogitsWarper(p.top_p)(None, x)
    return x[0]


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8),
                                                     (0.9, 20, 0.5), (1.0, 1, 1.0)])
def test_warping_matches_transformers(temperature, top_k, top_p):
    logits = torch.randn(97) * 3
    p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    ours, ref = warp(logits, p), hf_warp(logits, p)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    keep = ~torch.isinf(ref)
    torch.testing.assert_close(ours[keep], ref[keep])
    if top_k and top_p == 1.0:
        assert int(keep.sum()) == top_k


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(50) * 2
    hist = [3, 7, 7, 11, 49]
    ours = apply_repetition_penalty(logits, torch.tensor(sorted(set(hist))), 1.3)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([hist]), logits[None].clone())[0]
    torch.testing.assert_close(ours, ref)
    assert ours[4] == logits[4]  # unseen ids untouched


def test_greedy_rows_take_the_argmax_and_penalty_changes_it():
    logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, 0.0, 1.9]])
    ps = [SamplingParams(), SamplingParams(repetition_penalty=2.0)]
    assert sample(logits, ps, [[], [0]], [None, None]) == [1, 2]


def test_seeded_draws_repeat_and_follow_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None].expand(1, 4)
    p = SamplingParams(temperature=1.0)
    g = torch.Generator().manual_seed(1)
    draws = [sample(logits, [p], [[]], [g])[0] for _ in range(4000)]
    g2 = torch.Generator().manual_seed(1)
    assert draws[:50] == [sample(logits, [p], [[]], [g2])[0] for _ in range(50)]
    freq = torch.bincount(torch.tensor(draws), minlength=4).float() / len(draws)
    assert (freq - probs).abs().max() < 0.03
    # top_p 0.6 keeps exactly {0, 1}: 0.5 alone is not enough, 0.5 + 0.3 is
    tp = SamplingParams(temperature=1.0, top_p=0.6)
    assert {sample(logits, [tp], [[]], [g])[0] for _ in range(300)} == {0, 1}


def test_mixed_batch_keeps_each_rows_settings():
    torch.manual_seed(0)
    logits = torch.randn(3, 40)
    ps = [SamplingParams(), SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=2.0, seed=5)]
    gens = [None, None, torch.Generator().manual_seed(5)]
    out = sample(logits, ps, [[], [], []], gens)
    assert out[0] == int(logits[0].argmax()) and out[1] == int(logits[1].argmax())
    assert 0 <= out[2] < 40


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(temperature=-1), dict(top_k=-2), dict(top_p=1.5),
                                 dict(repetition_penalty=0)])
def test_invalid_params_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_stop_given_as_a_string_becomes_a_list():
    assert SamplingParams(stop="\n").stop == ["\n"]
