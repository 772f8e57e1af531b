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
from kws.data.piper import synthesize
from kws.data.real import write_phrase_pairs
from kws.data.utterance import random_word_span

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


def cuts(sentences: list[str], rng: np.random.Generator, prefix: str) -> list[tuple[str, np.ndarray, str]]:
    """One ``(clip id, audio, text)`` cut of 1-3 words (>= 3 phonemes) per synthesized sentence."""
    out = []
    for k, text in enumerate(sentences):
        u = synthesize(text, seed=k)
        for _ in range(5):
            i, j = random_word_span(len(u.words), rng)
            if sum(len(p) for p in u.phonemes[i : j + 1]) >= 3:
                break
        else:
            continue
        c = u.crop(i, j, MARGIN, MARGIN)
        out.append((f"{prefix}{k:04d}", c.audio, c.text))
    return out


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
    print(json.dumps(write_phrase_pairs(cuts(sentences, rng, a.text), a.out, rng)))


if __name__ == "__main__":
    main()
