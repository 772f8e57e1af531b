"""A small real-speech dev set from Debian packages, in the contract's pairs and streams formats.

Sources (with the transcripts they ship):
- ``pocketsphinx-testdata``: ``cards/*.wav`` (``cards.transcription``: "ten of clubs", ...),
  ``librivox/*.wav`` (``transcription``: read sentences), ``goforward.raw`` ("go forward ten
  meters", 16 kHz int16, the transcript of pocketsphinx's own tests);
- ``klettres-data``: ``{en,en_GB}/syllab/*.ogg``, short words named in ``sounds.xml`` (two
  speakers; the letter clips and the non-word sounds "aw", "ch", "th" are left out).

Pairs: every clip with its transcript (positive), a hard negative (smallest non-zero phoneme
distance, same word count) and an easy negative. Streams: one recording of all clips in a
row with silences, keywords = four klettres words, events = where those clips were placed.

``build_real_phrases`` cuts LibriPhrase-style clips (1-3 consecutive words) out of the
pocketsphinx sentences, at word boundaries found by PocketSphinx's forced alignment (its own
acoustic model, trained on real speech, not ours), and pairs them the same way.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

PS_DATA = Path("/usr/share/pocketsphinx/test/data")
KLETTRES = Path("/usr/share/klettres")
_NOT_WORDS = {"AW", "CH", "TH"}
STREAM_KEYWORDS = ["dog", "key", "sky", "jet"]


def real_clips() -> list[tuple[str, str, str]]:
    """``(clip id, audio path, transcript)`` of every usable clip found on this machine."""
    out = []
    line = re.compile(r"<s>\s*(.*?)\s*</s>\s*\((.+)\)")
    for sub, trans in (("cards", "cards.transcription"), ("librivox", "transcription")):
        f = PS_DATA / sub / trans
        if f.exists():
            for ln in f.read_text().splitlines():
                m = line.search(ln)
                if m and (PS_DATA / sub / f"{m.group(2)}.wav").exists():
                    out.append((f"ps-{sub}-{m.group(2)}", str(PS_DATA / sub / f"{m.group(2)}.wav"), m.group(1)))
    if (PS_DATA / "goforward.raw").exists():
        out.append(("ps-goforward", str(PS_DATA / "goforward.raw"), "go forward ten meters"))
    for lang in ("en", "en_GB"):
        xml = KLETTRES / lang / "sounds.xml"
        if not xml.exists():
            continue
        root = ET.parse(xml).getroot()
        for lang_el in root.iter("language"):
            for syl in lang_el.iter("syllables"):
                for snd in syl.iter("sound"):
                    name, rel = snd.get("name", ""), snd.get("file", "")
                    path = KLETTRES / rel
                    if name.upper() in _NOT_WORDS or not rel.startswith(f"{lang}/") or not path.exists():
                        continue
                    out.append((f"kl-{lang}-{name.lower()}", str(path), name.lower()))
    return out


def _load(path: str) -> np.ndarray:
    from kws.eval.manifest import load_audio

    if path.endswith(".raw"):
        return np.fromfile(path, dtype=np.int16).astype(np.float32) / 32768.0
    return load_audio(path)


def _speech_span(x: np.ndarray, sr: int = 16000) -> tuple[float, float]:
    """First and last 10 ms frame above 10 % of the clip's peak frame energy."""
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    e = np.sqrt((frames**2).mean(axis=1))
    on = np.nonzero(e > 0.1 * e.max())[0]
    return float(on[0] * 160 / sr), float((on[-1] + 1) * 160 / sr)


def build_real(out: str | Path, seed: int = 0) -> dict:
    """Write ``pairs.jsonl``, ``streams.jsonl`` and 16 kHz WAVs under ``out``; return counts."""
    from kws.data.lexicon import Lexicon
    from kws.eval.manifest import write_audio, write_jsonl

    out = Path(out)
    clips = real_clips()
    if not clips:
        raise RuntimeError("no real speech found: apt-get install pocketsphinx-testdata klettres-data")
    lex = Lexicon()
    rng = np.random.default_rng(seed)
    texts = [t for _, _, t in clips]
    pairs, audio = [], {}
    for cid, path, text in clips:
        x = _load(path)
        audio[cid] = x
        rel = f"clips/{cid}.wav"
        write_audio(out / rel, x)
        hard = lex.hard_negatives(text, rng, k=1)
        others = [t for t in texts if t != text and len(t.split()) == len(text.split())] or lex.phrases
        easy = lex.easy_negative(text, rng, pool=others if len(others) > 3 else lex.phrases)
        pairs.append({"id": f"{cid}-positive", "audio": rel, "text": text, "label": 1, "kind": "positive"})
        if hard:
            pairs.append({"id": f"{cid}-hard", "audio": rel, "text": hard[0], "label": 0, "kind": "hard"})
        pairs.append({"id": f"{cid}-easy", "audio": rel, "text": easy, "label": 0, "kind": "easy"})
    write_jsonl(out / "pairs.jsonl", pairs)
    # one stream: every clip in a random order, 0.5-2 s of quiet noise between them
    order = [clips[int(i)] for i in rng.permutation(len(clips))]
    parts, events, t = [np.zeros(8000, np.float32)], [], 0.5
    for cid, _, text in order:
        x = audio[cid]
        if text in STREAM_KEYWORDS:
            s, e = _speech_span(x)
            events.append({"keyword": text, "start": round(t + s, 3), "end": round(t + e, 3)})
        gap = np.zeros(int(rng.uniform(0.5, 2.0) * 16000), np.float32)
        parts += [x, gap]
        t += (len(x) + len(gap)) / 16000
    stream = np.concatenate(parts)
    stream = stream + 0.002 * rng.standard_normal(len(stream)).astype(np.float32)
    write_audio(out / "streams" / "real.wav", stream)
    write_jsonl(out / "streams.jsonl", [{"id": "real", "audio": "streams/real.wav", "keywords": STREAM_KEYWORDS,
                                          "events": events}])
    return {"clips": len(clips), "trials": len(pairs), "stream_seconds": round(len(stream) / 16000, 1),
            "events": len(events)}


def align_words(x: np.ndarray, text: str, decoder=None) -> list[tuple[str, float, float]]:
    """``(word, start s, end s)`` of ``text`` in 16 kHz audio ``x`` by PocketSphinx forced alignment.

    Silences and fillers are dropped; alternative pronunciations (``was(2)``) keep the word. Empty
    when the alignment fails.
    """
    from pocketsphinx import Decoder

    d = decoder or Decoder(samprate=16000, loglevel="FATAL")
    d.set_align_text(text)
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    d.start_utt()
    d.process_raw(pcm.tobytes(), full_utt=True)
    d.end_utt()
    out = []
    for seg in d.seg() or []:
        w = re.sub(r"\(\d+\)$", "", seg.word)
        if w.startswith(("<", "[", "+")):
            continue
        out.append((w, seg.start_frame / 100, (seg.end_frame + 1) / 100))
    return out


def build_real_phrases(out: str | Path, seed: int = 0, max_words: int = 3, min_phones: int = 3,
                       margin: float = 0.03) -> dict:
    """Pairs of 1..``max_words``-word phrases cut from the pocketsphinx sentences (``margin`` s
    of context each side): ``pairs.jsonl`` and 16 kHz WAVs under ``out``; return counts."""
    from kws.data.lexicon import Lexicon

    lex = Lexicon()
    rng = np.random.default_rng(seed)
    spans = []  # (clip id, audio, text)
    for cid, path, text in real_clips():
        if not cid.startswith("ps-"):
            continue
        x = _load(path)
        words = align_words(x, text)
        if [w for w, _, _ in words] != text.split():
            continue  # the aligner gave up or re-spelled the transcript
        for i in range(len(words)):
            for j in range(i, min(len(words), i + max_words)):
                phrase = " ".join(w for w, _, _ in words[i : j + 1])
                if len(lex.phonemes(phrase)) < min_phones:
                    continue
                a = max(0, int((words[i][1] - margin) * 16000))
                b = min(len(x), int((words[j][2] + margin) * 16000))
                spans.append((f"{cid}-{i:02d}-{j - i + 1}", x[a:b], phrase))
    if not spans:
        raise RuntimeError("no real sentences found: apt-get install pocketsphinx-testdata")
    return write_phrase_pairs(spans, out, rng, lex)


def write_phrase_pairs(spans: list[tuple[str, np.ndarray, str]], out: str | Path, rng: np.random.Generator,
                       lex=None) -> dict:
    """``(clip id, 16 kHz audio, text)`` cuts -> WAVs and ``pairs.jsonl`` (positive, hard, easy per
    clip; easy texts drawn from the other cuts of as many words) under ``out``; return counts."""
    from kws.data.lexicon import Lexicon
    from kws.eval.manifest import write_audio, write_jsonl

    out = Path(out)
    lex = lex or Lexicon()
    pairs = []
    for cid, x, text in spans:
        rel = f"clips/{cid}.wav"
        write_audio(out / rel, x)
        n = len(text.split())
        others = [t for _, _, t in spans if t != text and len(t.split()) == n]
        easy = lex.easy_negative(text, rng, pool=others if len(others) > 3 else lex.phrases)
        pairs.append({"id": f"{cid}-positive", "audio": rel, "text": text, "label": 1, "kind": "positive"})
        for hard in lex.hard_negatives(text, rng, k=1):
            pairs.append({"id": f"{cid}-hard", "audio": rel, "text": hard, "label": 0, "kind": "hard"})
        pairs.append({"id": f"{cid}-easy", "audio": rel, "text": easy, "label": 0, "kind": "easy"})
    write_jsonl(out / "pairs.jsonl", pairs)
    return {"clips": len(spans), "trials": len(pairs),
            "seconds": round(sum(len(x) for _, x, _ in spans) / 16000, 1)}
