"""Manifests of the keyword-spotting evaluation contract (shared/specs/kws-eval.md).

``pairs.jsonl``: ``{"id", "audio", "text", "label", "kind"}`` per trial; ``streams.jsonl``:
``{"id", "audio", "keywords", "events": [{"keyword", "start", "end"}]}`` per recording.
Audio paths are relative to the manifest's folder. Scores: ``{"id", "score"}``; detections:
``{"id", "keyword", "time", "score"}``. Audio of any rate and channel count loads as 16 kHz mono.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
KINDS = ("positive", "hard", "easy")


@dataclass
class Pair:
    """One verification trial; ``audio`` is an absolute path."""

    id: str
    audio: str
    text: str
    label: int
    kind: str


@dataclass
class Event:
    keyword: str
    start: float
    end: float


@dataclass
class StreamItem:
    """One long recording with its enrolled keywords and every keyword occurrence."""

    id: str
    audio: str
    keywords: list[str]
    events: list[Event] = field(default_factory=list)
    duration: float = 0.0  # seconds; filled by ``fill_durations``


class ManifestError(ValueError):
    """A manifest line that breaks the contract (the message names the file and line)."""


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{n}: not JSON ({e})") from None
            if not isinstance(obj, dict):
                raise ManifestError(f"{path}:{n}: expected a JSON object")
            yield n, obj


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines (atomically: a temp file, then rename); return the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def _need(obj: dict, key: str, typ, where: str):
    if key not in obj:
        raise ManifestError(f"{where}: missing field {key!r}")
    val = obj[key]
    if not isinstance(val, typ) or isinstance(val, bool) and typ is not bool:
        raise ManifestError(f"{where}: field {key!r} must be {getattr(typ, '__name__', typ)}, got {val!r}")
    return val


def read_pairs(path: str | Path) -> list[Pair]:
    """Read and validate ``pairs.jsonl`` (ids unique, label 0/1, kind consistent with label)."""
    root = Path(path).resolve().parent
    out, seen = [], set()
    for n, obj in iter_jsonl(path):
        where = f"{path}:{n}"
        pid = str(_need(obj, "id", (str, int), where))
        label = _need(obj, "label", int, where)
        if label not in (0, 1):
            raise ManifestError(f"{where}: label must be 0 or 1, got {label}")
        kind = obj.get("kind", "positive" if label else "easy")
        if kind not in KINDS:
            raise ManifestError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
        if (kind == "positive") != (label == 1):
            raise ManifestError(f"{where}: kind {kind!r} does not agree with label {label}")
        if pid in seen:
            raise ManifestError(f"{where}: duplicate id {pid!r}")
        seen.add(pid)
        audio = str(root / _need(obj, "audio", str, where))
        out.append(Pair(pid, audio, _need(obj, "text", str, where), label, kind))
    return out


def read_streams(path: str | Path) -> list[StreamItem]:
    """Read and validate ``streams.jsonl`` (every event names an enrolled keyword, start <= end)."""
    root = Path(path).resolve().parent
    out, seen = [], set()
    for n, obj in iter_jsonl(path):
        where = f"{path}:{n}"
        sid = str(_need(obj, "id", (str, int), where))
        if sid in seen:
            raise ManifestError(f"{where}: duplicate id {sid!r}")
        seen.add(sid)
        keywords = _need(obj, "keywords", list, where)
        if not keywords or not all(isinstance(k, str) for k in keywords):
            raise ManifestError(f"{where}: keywords must be a non-empty list of strings")
        events = []
        for ev in obj.get("events", []):
            kw = _need(ev, "keyword", str, where)
            if kw not in keywords:
                raise ManifestError(f"{where}: event keyword {kw!r} is not among the keywords")
            start, end = float(_need(ev, "start", (int, float), where)), float(_need(ev, "end", (int, float), where))
            if end < start:
                raise ManifestError(f"{where}: event end {end} < start {start}")
            events.append(Event(kw, start, end))
        out.append(StreamItem(sid, str(root / _need(obj, "audio", str, where)), keywords, events))
    return out


def fill_durations(streams: list[StreamItem]) -> list[StreamItem]:
    """Set each stream's ``duration`` from its audio file header."""
    import soundfile as sf

    for st in streams:
        try:
            info = sf.info(st.audio)
        except Exception as e:
            raise ManifestError(f"stream {st.id}: cannot read audio {st.audio}: {e}") from None
        st.duration = info.frames / info.samplerate
    return streams


def pairs_rows(pairs: list[Pair], root: str | Path) -> list[dict]:
    """Pairs as manifest rows with audio paths relative to ``root`` (the manifest's folder)."""
    import os

    return [{"id": p.id, "audio": os.path.relpath(p.audio, root), "text": p.text, "label": p.label,
             "kind": p.kind} for p in pairs]


def read_scores(path: str | Path) -> dict[str, float]:
    """``id -> score`` from a SCORES.jsonl."""
    out = {}
    for n, obj in iter_jsonl(path):
        out[str(_need(obj, "id", (str, int), f"{path}:{n}"))] = float(_need(obj, "score", (int, float), f"{path}:{n}"))
    return out


def read_detections(path: str | Path) -> list[dict]:
    """Detections ``{"id", "keyword", "time", "score"}`` from a DETECTIONS.jsonl."""
    out = []
    for n, obj in iter_jsonl(path):
        where = f"{path}:{n}"
        out.append({"id": str(_need(obj, "id", (str, int), where)), "keyword": _need(obj, "keyword", str, where),
                    "time": float(_need(obj, "time", (int, float), where)),
                    "score": float(_need(obj, "score", (int, float), where))})
    return out


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any WAV (or FLAC/OGG), any rate and channel count -> float32 mono at ``sample_rate``.

    Channels are averaged; the rate is converted by the edge runtime's resampler
    (``edge.features.resample``, soxr), so no training-only dependency is needed.
    """
    import soundfile as sf

    from edge.features import resample

    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        why = "no such file" if not Path(path).exists() else e  # libsndfile says only "System error"
        raise ManifestError(f"cannot read audio {path}: {why}") from None
    if not np.isfinite(x).all():  # a float WAV may hold NaN/inf: it would score as silence
        raise ManifestError(f"cannot use audio {path}: it contains non-finite samples (NaN or inf)")
    x = resample(x.mean(axis=1), int(sr), sample_rate)
    return np.ascontiguousarray(x, dtype=np.float32)


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM WAV (or FLAC by extension), creating folders as needed."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
