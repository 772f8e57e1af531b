"""Pairs of 1-3 word phrases cut out of longer Piper sentences (LibriPhrase style, synthetic).

Each sentence (5-12 words: read-prose sentences from the LLM text corpus, or random words as the
KWS corpus makes them) is spoken by the Piper US voice; one span of 1-3 words (>= 3 phonemes) is
cut 30 ms outside its exact word boundaries, with the coarticulation of its neighbours at both
edges, and paired with its text, a hard negative and an easy one (`kws.data.lexicon`).

    python scripts/dev_data/piper_cuts.py --text book --out data/kws/piper_cuts_book
    python scripts/dev_data/piper_cuts.py --text random --out data/kws/piper_cuts_random

`--text book` reads `.llmdata/train.txt.xz` (`python scripts/llm_corpus/build.py`).
"""

from __future__ import annotations

import argparse
import json
import lzma
import re
from pathlib import Path

import numpy as np

from kws.corpus import random_sentence
from kws.data.lexicon import Lexicon
from kws.data.piper import synthesize
from kws.eval.manifest import write_audio, write_jsonl

MARGIN = 0.03  # seconds kept outside the word boundaries


def book_sentences(path: str | Path, n: int, rng: np.random.Generator) -> list[str]:
    """`n` random sentences of 5-12 plain words from the corpus, lower case, no punctuation."""
    with lzma.open(path, "rt") as f:
        sents = re.split(r"(?<=[.!?;:])\s+", f.read())
    out = []
    for i in rng.permutation(len(sents)):
        words = [w.strip("'") for w in re.sub(r"[^a-z' ]", " ", sents[i].lower()).split()]
        words = [w for w in words if w]
        if 5 <= len(words) <= 12 and all(w.isalpha() for w in words):
            out.append(" ".join(words))
            if len(out) == n:
                break
    return out


def build(sentences: list[str], out: Path, rng: np.random.Generator, prefix: str) -> dict:
    lex = Lexicon()
    spans = []
    for k, text in enumerate(sentences):
        u = synthesize(text, seed=k)
        for _ in range(5):
            i = int(rng.integers(len(u.words)))
            j = min(len(u.words) - 1, i + int(rng.integers(3)))
            if sum(len(p) for p in u.phonemes[i : j + 1]) >= 3:
                break
        else:
            continue
        a = max(0, int((u.word_times[i][0] - MARGIN) * 16000))
        b = min(len(u.audio), int((u.word_times[j][1] + MARGIN) * 16000))
        spans.append((f"{prefix}{k:04d}", u.audio[a:b], " ".join(u.words[i : j + 1])))
    pairs = []
    for cid, x, text in spans:
        rel = f"clips/{cid}.wav"
        write_audio(out / rel, x)
        others = [t for _, _, t in spans if t != text and len(t.split()) == len(text.split())]
        pairs.append({"id": f"{cid}-positive", "audio": rel, "text": text, "label": 1, "kind": "positive"})
        for hard in lex.hard_negatives(text, rng, k=1):
            pairs.append({"id": f"{cid}-hard", "audio": rel, "text": hard, "label": 0, "kind": "hard"})
        easy = lex.easy_negative(text, rng, pool=others if len(others) > 3 else None)
        pairs.append({"id": f"{cid}-easy", "audio": rel, "text": easy, "label": 0, "kind": "easy"})
    write_jsonl(out / "pairs.jsonl", pairs)
    return {"clips": len(spans), "trials": len(pairs), "seconds": round(sum(len(x) for _, x, _ in spans) / 16000, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", choices=["book", "random"], default="book")
    ap.add_argument("--n", type=int, default=300, help="sentences (one cut each)")
    ap.add_argument("--corpus", default=".llmdata/train.txt.xz", help="for --text book")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    if a.text == "book":
        sentences = book_sentences(a.corpus, a.n, rng)
    else:
        sentences = [random_sentence(rng, 5, 10) for _ in range(a.n)]
    print(json.dumps(build(sentences, Path(a.out), rng, a.text)))


if __name__ == "__main__":
    main()
