"""The offline phonemizer: CMUdict words, OOV words, numbers, punctuation, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge.phonemizer import OOV_GUESSES, PHONEMES, WORD_BOUNDARY, Phonemizer, edit_distance, strip_stress


@pytest.fixture(scope="module")
def ph() -> Phonemizer:
    return Phonemizer()


def test_inventory_is_39_arpabet_without_stress():
    assert len(PHONEMES) == 39 == len(set(PHONEMES))
    assert WORD_BOUNDARY not in PHONEMES
    assert all(not p[-1].isdigit() for p in PHONEMES)
    assert strip_stress(["AY1", "T", "<unk>", "UW0"]) == ["AY", "T", "UW"]


def test_known_words(ph):
    assert ph.phonemize("lights on") == [["L", "AY", "T", "S"], ["AA", "N"]]
    assert ph.phonemize("Stop MUSIC") == [["S", "T", "AA", "P"], ["M", "Y", "UW", "Z", "IH", "K"]]
    assert ph.flat("lights on", boundaries=True) == ["L", "AY", "T", "S", WORD_BOUNDARY, "AA", "N"]


def test_pronunciations_fewest_departures_first(ph):
    the = [["DH", "AH"], ["DH", "IY"]]
    assert ph.pronunciations("the") == the and ph.pronunciations("the")[0] == ph.flat("the")
    both = [a + b for a in the for b in the]  # (AH AH), (AH IY), (IY AH), (IY IY)
    assert ph.pronunciations("the the", limit=4) == both
    assert ph.pronunciations("the the", limit=3) == both[:3]  # the two-word departure goes first
    assert ph.pronunciations("lights") == [ph.flat("lights")]  # one CMUdict entry
    # weak forms follow CMUdict's own: "have" has one CMUdict entry and two weak forms
    assert ph.pronunciations("have") == [["HH", "AE", "V"], ["HH", "AH", "V"], ["AH", "V"]]
    assert ["HH", "AE", "D", "IY"] in ph.pronunciations("had he")  # the dropped /h/ of "he"
    assert ph.flat("have") == ["HH", "AE", "V"]  # the canonical pronunciation is unchanged
    assert ph.pronunciations("zorblax the")[0] == ph.flat("zorblax the")  # OOV: its greedy guess first
    guesses = ph.pronunciations("zorblax", limit=8)  # then the G2P's other guesses, up to OOV_GUESSES
    assert guesses[0] == ph.flat("zorblax") and 2 <= len(guesses) <= OOV_GUESSES
    assert len({tuple(g) for g in guesses}) == len(guesses)
    with pytest.raises(ValueError):
        ph.pronunciations("the", limit=0)
    # 2^14 combinations: all 14 single departures still come right after the first pronunciation
    many = ph.pronunciations("the " * 14, limit=15)
    assert many[0] == ph.flat("the " * 14) and ["DH", "IY"] + ["DH", "AH"] * 13 in many
    # only the words that have alternatives are combined: a long text with one such word is instant
    assert len(ph.pronunciations("lights " * 39 + "the")) == 2


def test_numbers_are_spelled_out(ph):
    assert ph.phonemize("turn on light 2") == [["T", "ER", "N"], ["AA", "N"], ["L", "AY", "T"], ["T", "UW"]]
    assert ph.normalize("room 21") == ["room", "twenty", "one"]
    assert ph.normalize("$5.50, 3rd, 1990, 5:30, 10%") == (
        ["five", "dollars", "fifty", "cents", "third", "nineteen", "ninety", "five", "thirty", "ten", "percent"])


def test_punctuation_is_stripped(ph):
    assert ph.phonemize("Hey, lights... on!?") == ph.phonemize("hey lights on")
    assert ph.normalize("rock-and-roll, don't") == ["rock", "and", "roll", "don't"]


def test_oov_word_goes_through_the_neural_model(ph):
    assert ph.phonemize("zorblax") == [["Z", "AO", "R", "B", "AH", "L", "K", "S"]]
    out = ph.phonemize("zorblax wakeline")
    assert len(out) == 2
    for word in out:
        assert word and all(p in PHONEMES for p in word)
    # the model should get the obvious consonants right
    assert out[0][0] == "Z" and "B" in out[0] and out[0][-1] == "S"
    assert out[1][0] == "W" and "K" in out[1] and out[1][-1] == "N"


@pytest.mark.parametrize("text", ["", "   ", "?!.", "你好", "привет мир", "lights 你好", None])
def test_empty_or_non_english_text_raises(ph, text):
    with pytest.raises(ValueError, match="phonemize"):
        ph.phonemize(text)


def test_without_oov_model_unknown_words_raise():
    strict = Phonemizer(oov=False)
    assert strict.phonemize("hello") == [["HH", "AH", "L", "OW"]]
    with pytest.raises(ValueError, match="not in CMUdict"):
        strict.phonemize("zorblaxify")


def test_edit_distance():
    assert edit_distance([], []) == 0
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert edit_distance(["L", "AY", "T"], ["L", "AY", "T", "S"]) == 1
    assert edit_distance(["A", "B"], []) == 2


def test_no_torch_no_nltk_no_network_on_import():
    code = (
        "import sys\n"
        "from edge.phonemizer import Phonemizer\n"
        "p = Phonemizer().warmup()\n"
        "assert p.phonemize('frobnicate 7')[-1] == ['S', 'EH', 'V', 'AH', 'N']\n"
        "assert 'torch' not in sys.modules and 'nltk' not in sys.modules and 'g2p_en' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.slow
def test_numpy_gru_matches_g2p_en_and_its_import_stays_offline():
    code = (
        "import nltk\n"
        "def boom(*a, **k): raise SystemExit('download attempted')\n"
        "nltk.download = boom\n"
        "from edge.phonemizer import NeuralG2P, import_g2p_en_offline\n"
        "g = import_g2p_en_offline().G2p()\n"
        "n = NeuralG2P()\n"
        "words = ['zorblax', 'wakeline', 'frobnicate', 'quixotical', 'blorptastic', 'kwyjibo']\n"
        "assert all(g.predict(w) == n.predict(w) for w in words)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "nltk_data" not in out.stderr  # NLTK prints [nltk_data] ... when it tries to download


def test_g2p_nbest_is_a_beam_search():
    from edge.phonemizer import NeuralG2P

    g = NeuralG2P()
    best = g.predict_nbest("zorblax", n=3)
    assert 1 <= len(best) <= 3 and len({tuple(b) for b in best}) == len(best)
    assert all(p in PHONEMES for b in best for p in strip_stress(b))
    # a word the model knows well: its first guess is the greedy one
    assert g.predict_nbest("lights", n=1) == [g.predict("lights")]
