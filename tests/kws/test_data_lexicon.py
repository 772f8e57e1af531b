"""Phrase lexicon: splits, LibriPhrase-style hard negatives, easy negatives."""

from __future__ import annotations

import numpy as np
import pytest

from edge.phonemizer import edit_distance
from kws.data.lexicon import MAX_WORDS, Lexicon, phrase_split


@pytest.fixture(scope="module")
def lex() -> Lexicon:
    return Lexicon()


def test_lexicon_size_and_splits(lex):
    assert len(lex.phrases) > 3000
    assert all(1 <= len(lex.ph.normalize(p)) <= MAX_WORDS for p in lex.phrases)
    train, dev, test = (set(lex.split(s)) for s in ("train", "dev", "test"))
    assert not train & dev and not train & test and not dev & test
    assert len(dev) > 200 and len(test) > 200 and len(train) > 5 * len(dev)
    assert phrase_split("Lights  ON") == phrase_split("lights on")


@pytest.mark.parametrize("text", ["lights on", "turn on the lights", "call anna", "structure attack",
                                  "hey wakeline", "channel 5"])
def test_hard_negatives_are_closest_nonzero_same_word_count(lex, text):
    rng = np.random.default_rng(0)
    target = list(lex.phonemes(text))
    negs = lex.hard_negatives(text, rng, k=3)
    assert len(negs) == 3
    dists = [edit_distance(target, list(lex.phonemes(n))) for n in negs]
    assert all(d > 0 for d in dists) and dists == sorted(dists)
    assert all(len(lex.ph.normalize(n)) == len(lex.ph.normalize(text)) for n in negs)
    # nothing in the lexicon with the same word count is closer (and non-identical)
    n_words = len(lex.ph.normalize(text))
    others = [edit_distance(target, list(lex.phones[p])) for p in lex.phrases
              if len(lex.ph.normalize(p)) == n_words]
    assert dists[0] <= min(d for d in others if d > 0)


def test_hard_negative_examples(lex):
    rng = np.random.default_rng(0)
    assert "light on" in lex.hard_negatives("lights on", rng, k=10)
    assert lex.hard_negatives("turn on the lights", rng, k=1)[0] != "turn on the lights"


def test_easy_negatives_are_far(lex):
    rng = np.random.default_rng(1)
    for text in ["lights on", "pepperoni", "emergency stop"]:
        e = lex.easy_negative(text, rng)
        assert edit_distance(list(lex.phonemes(text)), list(lex.phonemes(e))) >= 3


def test_custom_phrases_and_determinism(lex):
    a = Lexicon(["open the door", "open the drawer", "close the door", "lights on"], phonemizer=lex.ph)
    assert a.phrases == ["open the door", "open the drawer", "close the door", "lights on"]
    h1 = a.hard_negatives("open the door", np.random.default_rng(5), k=2)
    h2 = a.hard_negatives("open the door", np.random.default_rng(5), k=2)
    assert h1 == h2
