"""A tiny dataset build: contract formats, voice-disjoint speakers, determinism and resume."""

from __future__ import annotations

import json
import os

import pytest
import soundfile as sf

from kws.data.build import Preset, build
from kws.data.espeak import voices
from kws.eval.manifest import fill_durations, read_pairs, read_streams

TINY = Preset("dev", pair_clips=4, clips_per_shard=2, streams=1, stream_seconds=30.0, train_utts=4,
              utts_per_shard=2)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    rep = build("tiny", out, seed=3, workers=1, progress=False, preset=TINY)
    return out, rep


def test_report_counts(built):
    out, rep = built
    assert rep["pairs"] == {"trials": 12, "clips": 4, "positive": 4, "hard": 4, "easy": 4}
    assert rep["streams"]["streams"] == 1 and rep["train"]["utterances"] == 4
    assert json.loads((out / "report.json").read_text())["shards_total"] == 2 + 1 + 2


def test_pairs_follow_the_contract(built):
    out, _ = built
    pairs = read_pairs(out / "pairs.jsonl")
    assert len(pairs) == 12
    by_clip = {}
    for p in pairs:
        by_clip.setdefault(p.audio, []).append(p)
        info = sf.info(p.audio)
        assert info.samplerate == 16000 and info.channels == 1 and 0.3 < info.duration < 10
    for trials in by_clip.values():
        assert sorted(t.kind for t in trials) == ["easy", "hard", "positive"]
        assert len({t.text for t in trials}) == 3
    dev_voices = {f"espeak:{v}" for v in voices("dev")} | {"flite:rms"}
    rows = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert all(r["voice"] in dev_voices for r in rows)


def test_stream_events_lie_in_the_audio(built):
    out, _ = built
    (st,) = fill_durations(read_streams(out / "streams.jsonl"))
    assert 29 < st.duration <= 30.0
    assert st.events, "a 30 s stream should hold at least one keyword"
    assert all(0 <= e.start < e.end <= st.duration and e.keyword in st.keywords for e in st.events)


def test_train_rows_have_alignments(built):
    out, _ = built
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    for r in rows:
        assert sf.info(out / r["audio"]).duration == pytest.approx(r["duration"], abs=1e-3)
        if r.get("background"):
            continue
        assert len(r["words"]) == len(r["phonemes"]) == len(r["word_times"]) == len(r["phone_times"])
        first, last = r["keyword_words"]
        assert r["words"][first:last + 1] == r["keyword"].lower().split()
        assert r["keyword_end"] == r["word_times"][last][1] <= r["duration"]
        assert r["hard_negative"] != r["keyword"]


def test_deterministic_and_resumable(built, tmp_path):
    out, _ = built
    again = build("tiny", out, seed=3, workers=1, progress=False, preset=TINY)
    assert again["shards_built"] == 0  # everything was there: nothing rebuilt
    # a fresh build with the same seed gives the same manifests and the same audio
    fresh = tmp_path / "fresh"
    (fresh / "parts").mkdir(parents=True)
    build("tiny", fresh, seed=3, workers=1, progress=False, preset=TINY)
    for name in ("pairs.jsonl", "streams.jsonl", "train.jsonl"):
        assert (fresh / name).read_text() == (out / name).read_text()
    a, _ = sf.read(out / "streams" / "s000.wav")
    b, _ = sf.read(fresh / "streams" / "s000.wav")
    assert (a == b).all()


def test_real_speech_dev_set(tmp_path):
    from kws.data.real import STREAM_KEYWORDS, build_real, real_clips

    clips = real_clips()
    if len(clips) < 10:
        pytest.skip("needs Debian pocketsphinx-testdata and klettres-data")
    assert ("ps-goforward", "/usr/share/pocketsphinx/test/data/goforward.raw", "go forward ten meters") in clips
    rep = build_real(tmp_path, seed=0)
    assert rep["clips"] == len(clips) and rep["trials"] >= 2 * len(clips)
    pairs = read_pairs(tmp_path / "pairs.jsonl")
    assert {p.kind for p in pairs} == {"positive", "hard", "easy"}
    assert all(sf.info(p.audio).samplerate == 16000 for p in pairs[:5])
    (st,) = fill_durations(read_streams(tmp_path / "streams.jsonl"))
    assert st.keywords == STREAM_KEYWORDS and len(st.events) == rep["events"] >= 4
    assert all(0 < e.start < e.end < st.duration for e in st.events)


def test_real_phrase_cuts(tmp_path):
    from kws.data.real import _load, align_words, build_real_phrases

    goforward = "/usr/share/pocketsphinx/test/data/goforward.raw"
    if not os.path.exists(goforward):
        pytest.skip("needs Debian pocketsphinx-testdata")
    x = _load(goforward)
    words = align_words(x, "go forward ten meters")
    assert [w for w, _, _ in words] == ["go", "forward", "ten", "meters"]
    assert all(0 <= a < b <= len(x) / 16000 for _, a, b in words)
    assert all(words[i][2] <= words[i + 1][1] + 1e-6 for i in range(3))  # in order, no overlap
    rep = build_real_phrases(tmp_path, seed=0)
    pairs = read_pairs(tmp_path / "pairs.jsonl")
    assert rep["trials"] == len(pairs) and rep["clips"] > 100
    assert {p.kind for p in pairs} == {"positive", "hard", "easy"}
    pos = {p.audio: p.text for p in pairs if p.kind == "positive"}
    assert all(1 <= len(t.split()) <= 3 for t in pos.values())
    assert all(sf.info(a).duration < 3.0 for a in list(pos)[:20])  # a phrase, not the sentence

