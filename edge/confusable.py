"""Confusable keyword generation: 1-3 phoneme edits that favour similar-sounding phonemes.

Used on the fly to train the matcher (hard negative texts with per-phoneme match labels) and at
enrollment to calibrate a per-keyword threshold. numpy only; shared by `kws` and `edge`.
"""

from __future__ import annotations

import numpy as np

from edge.phonemizer import PHONEMES

# Broad phonetic classes: a substitution mostly stays inside the class, as real confusions do.
_CLASSES = [
    "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW",
    "P B T D K G",
    "F V TH DH S Z SH ZH HH",
    "CH JH",
    "M N NG",
    "L R W Y",
]
_INDEX = {p: i for i, p in enumerate(PHONEMES)}
_CLASS_OF = {}
for _ci, _members in enumerate(_CLASSES):
    for _p in _members.split():
        _CLASS_OF[_INDEX[_p]] = [_INDEX[m] for m in _members.split() if m != _p]


def edit_phonemes(ids: list[int], rng: np.random.Generator, n_edits: int | None = None,
                  p_same_class: float = 0.85) -> tuple[list[int], list[int]]:
    """Apply 1-3 random edits (substitute / insert / delete) to phoneme ids.

    Returns (new ids, match mask): mask[j] is 1 where new position j is an unedited copy of the
    input (the subsequence-level label), 0 where it was substituted or inserted. Never returns the
    input unchanged or an empty sequence.
    """
    if not ids:
        raise ValueError("edit_phonemes: empty phoneme sequence")
    n_edits = n_edits or int(rng.integers(1, 4))
    for _ in range(8):
        seq = [(p, 1) for p in ids]
        for _e in range(n_edits):
            op = rng.choice(3, p=[0.6, 0.2, 0.2]) if len(seq) > 1 else rng.choice(2, p=[0.75, 0.25])
            j = int(rng.integers(len(seq)))
            if op == 0:
                seq[j] = (_substitute(seq[j][0], rng, p_same_class), 0)
            elif op == 1:
                seq.insert(j + int(rng.integers(2)), (int(rng.integers(len(PHONEMES))), 0))
            else:
                del seq[j]
        new = [p for p, _ in seq]
        if new and new != list(ids):
            return new, [m for _, m in seq]
    new = list(ids)
    new[0] = _substitute(new[0], rng, 1.0)
    return new, [0] + [1] * (len(new) - 1)


def _substitute(p: int, rng: np.random.Generator, p_same_class: float) -> int:
    near = _CLASS_OF.get(p, [])
    if near and rng.random() < p_same_class:
        return int(near[int(rng.integers(len(near)))])
    q = int(rng.integers(len(PHONEMES) - 1))
    return q + 1 if q >= p else q


def confusables(ids: list[int], count: int, seed: int = 0, max_len: int | None = None) -> list[list[int]]:
    """`count` distinct confusable phoneme sequences of `ids` (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = []
    seen = {tuple(ids)}
    for _ in range(count * 10):
        new, _mask = edit_phonemes(ids, rng)
        if max_len and len(new) > max_len:
            continue
        if tuple(new) not in seen:
            seen.add(tuple(new))
            out.append(new)
        if len(out) == count:
            break
    return out
