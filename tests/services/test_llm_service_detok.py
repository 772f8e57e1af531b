"""Incremental detokenization and stop strings against a real byte-level BPE tokenizer."""

from __future__ import annotations

import random

import pytest

from services.llm.detok import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(["héllo wörld, the lights are on. 你好 世界 ✨ stop here"] * 20, trainer)
    return t


TEXTS = ["héllo wörld, the lights are on.", "你好 世界 ✨ and emoji 🙂 in the middle", "plain ascii text"]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_the_full_decode(tok, text):
    ids = tok.encode(text).ids
    d = IncrementalDetokenizer(tok)
    rng = random.Random()
    out, i = [], 0
    while i < len(ids):
        k = rng.randint(1, 3)
        delta = d.push(ids[i:i + k])
        assert "\ufffd" not in delta
        out.append(delta)
        i += k
    out.append(d.flush())
    assert "".join(out) == tok.decode(ids) == text
    assert d.text == text


def test_stop_string_cuts_before_it_even_across_tokens(tok):
    text = "the lights are on. stop here and more"
    ids = tok.encode(text).ids
    d = IncrementalDetokenizer(tok, stop=["stop here"])
    out = "".join(d.push([i]) for i in ids) + d.flush()
    assert d.stopped and out == "the lights are on. " == d.text


def test_held_back_stop_prefix_is_released_at_the_end(tok):
    ids = tok.encode("lights are on. sto").ids
    d = IncrementalDetokenizer(tok, stop=["stop here"])
    shown = "".join(d.push([i]) for i in ids)
    assert not shown.endswith("sto")  # could still become the stop string
    assert shown + d.flush() == "lights are on. sto" and not d.stopped
