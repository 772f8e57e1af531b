"""The edge keyword-spotting runtime: one shared `Spotter`, one `Stream` per audio source.

numpy + onnxruntime only. The Spotter holds the ONNX encoder session, the phoneme table (the
audio-compliant text encoder), the matcher weights and the phonemizer; it keeps no per-stream
state. A Stream holds the resampler, feature and encoder caches, its enrolled keywords with their
online DSP state, and refractory timers. See docs/architecture.md for the contract.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.confusable import confusables
from edge.features import FeatureConfig, LogMel, StreamingLogMel, StreamResampler, check_rate, resample
from edge.scoring import MAX_PHONES, NMAX, MatcherWeights, keyword_rows, score_frames
from edge.stream import Stream

CHUNK_FRAMES = 10  # feature frames per decode step: 100 ms
REFRACTORY_S = 1.0
PEAK_HOLD = 5  # frames (100 ms) a rising score may delay a detection
CALIBRATION_TEXTS = 12
# A keyword is spotted under up to this many pronunciations (CMUdict's variants or the G2P's guesses for
# an unknown word, and the weak forms of function words, `Phonemizer.pronunciations`); its score is the
# best of them. Read speech reduces
# function words ("had he" HH AE D IY, "than" DH AH N): on the real phrases hard AUC 0.736 -> 0.780
# with 4 (2: 0.759, 8: 0.781), easy 0.983 -> 0.984; synthetic sets within +-0.004 (docs/kws.md, session 9).
PRONUNCIATIONS = 4


# A clip is scored with quiet white noise around it (0.2 s before, 0.1 s after; -70 dBFS, fixed), not
# digital zeros: log-mel of exact zeros is an input the encoder almost never met in training (its
# silences carry noise), and clips cut out of continuous speech that started on zeros scored far
# worse: real phrase cuts 0.688 -> 0.728 hard AUC, synthetic cuts 0.782 -> 0.822 (docs/kws.md).
_PAD_NOISE = 3e-4 * np.random.default_rng(0x5EED).standard_normal(4800).astype(np.float32)
_PAD_BEFORE, _PAD_AFTER = _PAD_NOISE[:3200], _PAD_NOISE[3200:]


@dataclass(frozen=True)
class EnrolledKeyword:
    """A keyword enrolled by text: its phonemes and thresholds."""

    text: str
    phonemes: tuple[str, ...]
    phoneme_ids: tuple[int, ...]
    threshold: float  # the one a stream uses unless the caller gives one
    auto_threshold: float  # calibrated at enrollment against generated confusable texts
    variants: tuple[tuple[int, ...], ...] = ()  # pronunciations spotted, phoneme_ids first (empty: just it)

    @property
    def pronunciations(self) -> tuple[tuple[int, ...], ...]:
        """Phoneme ids of every pronunciation the keyword is spotted under, the canonical one first."""
        return self.variants or (self.phoneme_ids,)


@dataclass(frozen=True)
class Detection:
    """One fired keyword. Times are seconds of stream audio from the first sample."""

    keyword: str
    score: float
    threshold: float
    start_time: float
    end_time: float
    fired_time: float


class Spotter:
    """Loaded model shared by many streams.

    Args:
        model_dir: directory with encoder.onnx, matcher.npz, phone_table.npz.
        num_threads: onnxruntime intra-op threads.
        threshold_mode: "auto" (calibrated per keyword at enrollment) or "default" (model card).
        int8: use encoder.int8.onnx when present.
    """

    def __init__(self, model_dir: str | Path, num_threads: int = 1, threshold_mode: str = "default",
                 int8: bool = False, phonemizer=None):
        import onnxruntime as ort

        if threshold_mode not in ("auto", "default"):
            raise ValueError(f"threshold_mode must be 'auto' or 'default', got {threshold_mode!r}")
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        d = Path(model_dir)
        enc = d / ("encoder.int8.onnx" if int8 and (d / "encoder.int8.onnx").exists() else "encoder.onnx")
        for f in (enc, d / "matcher.npz", d / "phone_table.npz"):
            if not f.exists():
                raise FileNotFoundError(f"model directory {d} lacks {f.name}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = num_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(enc), so, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = dict(meta)
        self.feature_cfg = FeatureConfig.from_dict(json.loads(meta["feature_config"]))
        self.phonemes = meta["phonemes"].split()
        self._pid = {p: i for i, p in enumerate(self.phonemes)}
        self.cache_len, self.dim = int(meta["cache_len"]), int(meta["dim"])
        self.stack = int(meta["stack"])
        self.default_threshold = float(meta["default_threshold"])
        if int(meta["nmax"]) != NMAX:
            raise ValueError(f"model built for NMAX={meta['nmax']}, runtime has {NMAX}")
        tab = np.load(d / "phone_table.npz")
        self.table_emb, self.table_logp = tab["emb"].astype(np.float32), tab["logp"].astype(np.float32)
        self.matcher = MatcherWeights.load(d / "matcher.npz")
        self.threshold_mode = threshold_mode
        self.model_dir = d
        self.logmel = LogMel(self.feature_cfg)
        self._phonemizer = phonemizer
        self._lock = threading.Lock()
        self._enrolled: dict[str, EnrolledKeyword] = {}

    @classmethod
    def from_dir(cls, model_dir: str | Path, num_threads: int = 1, **kw) -> Spotter:
        """Load a model directory (see `kws.export`)."""
        return cls(model_dir, num_threads=num_threads, **kw)

    # -- text side -------------------------------------------------------------------------
    @property
    def phonemizer(self):
        if self._phonemizer is None:
            from edge.phonemizer import Phonemizer

            with self._lock:
                if self._phonemizer is None:
                    self._phonemizer = Phonemizer()
        return self._phonemizer

    def enroll(self, text: str, use_cache: bool = True) -> EnrolledKeyword:
        """Text -> phonemes -> thresholds (cached per text unless use_cache is False). Raises ValueError on bad text."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("keyword text is empty")
        key = " ".join(text.lower().split())
        hit = self._enrolled.get(key) if use_cache else None
        if hit is not None:
            return hit
        variants = self.pronunciation_ids(text)
        ids = variants[0]
        phones = [self.phonemes[i] for i in ids]
        auto = self._calibrate(variants)
        thr = auto if self.threshold_mode == "auto" else self.default_threshold
        kw = EnrolledKeyword(key, tuple(phones), tuple(ids), float(thr), float(auto),
                             tuple(tuple(v) for v in variants))
        with self._lock:
            self._enrolled[key] = kw
        return kw

    def _lookup(self, text) -> EnrolledKeyword | None:
        """The enrolled keyword of `text`, if enrolled."""
        return self._enrolled.get(" ".join(text.lower().split()) if isinstance(text, str) else text)

    def _ids(self, text: str, phones: list[str], limit: int | None) -> list[int]:
        if limit is not None and len(phones) > limit:
            raise ValueError(f"keyword {text!r} has {len(phones)} phonemes; at most {limit} are supported")
        return [self._pid[p] for p in phones]

    def phoneme_ids(self, text: str, limit: int | None = MAX_PHONES) -> list[int]:
        """Text -> flat phoneme ids (no threshold calibration). Raises ValueError on bad text.

        `limit` caps the length of streaming keywords; pair verification passes None (any length).
        """
        hit = self._lookup(text)
        if hit is not None:
            return list(hit.phoneme_ids)
        if not isinstance(text, str) or not text.strip():
            raise ValueError("keyword text is empty")
        return self._ids(text, [p for w in self.phonemizer.phonemize(text) for p in w], limit)

    def pronunciation_ids(self, text: str, limit: int | None = MAX_PHONES) -> list[list[int]]:
        """Phoneme ids of up to PRONUNCIATIONS pronunciations of `text`, the `phoneme_ids` one first.

        `limit` as in `phoneme_ids`: the canonical pronunciation over it raises, longer variants are dropped.
        """
        hit = self._lookup(text)
        if hit is not None:
            return [list(v) for v in hit.pronunciations]
        if not isinstance(text, str) or not text.strip():
            raise ValueError("keyword text is empty")
        prons = self.phonemizer.pronunciations(text, PRONUNCIATIONS)  # the first is `phonemize`'s
        out = [self._ids(text, prons[0], limit)]
        for pron in prons[1:]:
            ids = [self._pid[p] for p in pron]
            if (limit is None or len(ids) <= limit) and ids not in out:
                out.append(ids)
        return out

    def _pseudo_frames(self, ids: list[int], per_phone: int = 4, pad: int = 3):
        """Frames an ideal utterance of `ids` would give: the phoneme table replayed."""
        e = np.zeros((pad, self.table_emb.shape[1]), np.float32)
        lp = np.full((pad, self.table_logp.shape[1]), -8.0, np.float32)
        lp[:, 0] = 0.0
        embs, lps = [e], [lp]
        for p in ids:
            embs.append(np.repeat(self.table_emb[p][None], per_phone, 0))
            lps.append(np.repeat(self.table_logp[p][None], per_phone, 0))
        embs.append(e)
        lps.append(lp)
        return np.concatenate(embs), np.concatenate(lps)

    def _calibrate(self, variants: list[list[int]]) -> float:
        """Threshold above the scores this keyword (the best of its pronunciations) gets on replayed
        confusable texts of its first pronunciation (other pronunciations are not confusables)."""
        ids = variants[0]
        conf = confusables(ids, CALIBRATION_TEXTS, seed=len(ids) * 7919 + sum(ids), max_len=MAX_PHONES)
        conf = [c for c in conf if list(c) not in variants]
        if not conf:
            return self.default_threshold
        frames = [self._pseudo_frames(c) for c in conf]
        t = max(f[0].shape[0] for f in frames)
        emb = np.zeros((len(conf), t, self.table_emb.shape[1]), np.float32)
        lp = np.full((len(conf), t, self.table_logp.shape[1]), -8.0, np.float32)
        lp[..., 0] = 0.0
        for r, (e, p) in enumerate(frames):
            emb[r, : len(e)], lp[r, : len(p)] = e, p
        # every pronunciation against every confusable in one pass: rows are (pronunciation, confusable)
        q, qi, mask, n = keyword_rows(self.table_emb, [v for v in variants for _ in conf])
        k = len(variants)
        rows = score_frames(self.matcher, q, qi, mask, n, np.tile(emb, (k, 1, 1)), np.tile(lp, (k, 1, 1)))
        neg = rows.max(axis=1).reshape(k, len(conf)).max(axis=0)
        hi = float(np.quantile(neg, 0.9))
        return float(np.clip(max(self.default_threshold, hi + 0.05), 0.05, 0.95))

    # -- streams ---------------------------------------------------------------------------
    def create_stream(self, keywords=()) -> Stream:
        """A new stream with keywords given as text or (text, threshold)."""
        s = Stream(self)
        for k in keywords:
            if isinstance(k, (tuple, list)):
                s.add_keyword(k[0], threshold=k[1])
            else:
                s.add_keyword(k)
        return s

    def is_ready(self, stream: Stream) -> bool:
        """True when the stream holds a full chunk (or a final partial one)."""
        return stream.ready_frames() > 0

    def decode(self, stream: Stream) -> None:
        """Run one chunk of the stream through the encoder and the keyword scorers."""
        self.decode_streams([stream])

    def decode_streams(self, streams: list[Stream]) -> None:
        """One batched encoder call for every ready stream (same chunk length batched together)."""
        groups: dict[int, list[Stream]] = {}
        for s in streams:
            n = s.ready_frames()
            if n > 0:
                groups.setdefault(n, []).append(s)
        for n, group in groups.items():
            feats = np.stack([s.take_frames(n) for s in group])
            cache = np.concatenate([s.cache for s in group])
            logp, emb, cache_out = self.session.run(None, {"feats": feats, "cache": cache})
            for i, s in enumerate(group):
                s.cache = cache_out[i : i + 1]
                s.consume(emb[i], logp[i])

    def encode(self, samples16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole clip -> (emb [T, E], logp [T, V]) with a fresh cache (identical to streaming)."""
        feats = self.logmel(samples16k)
        feats = feats[: len(feats) - len(feats) % self.stack]
        if len(feats) == 0:
            return np.zeros((0, self.table_emb.shape[1]), np.float32), np.zeros((0, 40), np.float32)
        cache = np.zeros((1, self.cache_len, self.dim), np.float32)
        logp, emb, _ = self.session.run(None, {"feats": feats[None], "cache": cache})
        return emb[0], logp[0]

    def score_pair(self, samples: np.ndarray, sample_rate: int, text: str) -> float:
        """Utterance-level verification score in [0, 1]: does the clip say `text`?"""
        return self.score_pairs(samples, sample_rate, [text])[0]

    def score_pairs(self, samples: np.ndarray, sample_rate: int, texts: list[str]) -> list[float]:
        """Scores of several texts against one clip (one encoder pass)."""
        check_rate(sample_rate)
        x = resample(np.asarray(samples, np.float32), sample_rate)
        emb, logp = self.encode(np.concatenate([_PAD_BEFORE, x, _PAD_AFTER]))
        if len(emb) == 0:
            return [0.0] * len(texts)
        variants = [self.pronunciation_ids(t, limit=None) for t in texts]
        q, qi, mask, n = keyword_rows(self.table_emb, [v for vs in variants for v in vs])
        best = score_frames(self.matcher, q, qi, mask, n, emb, logp).max(axis=1)
        out, r = [], 0
        for vs in variants:  # a text scores its best pronunciation
            out.append(float(best[r : r + len(vs)].max()))
            r += len(vs)
        return out

    def new_resampler(self, sample_rate: int) -> StreamResampler:
        return StreamResampler(sample_rate, self.feature_cfg.sample_rate)

    def new_featurizer(self) -> StreamingLogMel:
        return StreamingLogMel(self.feature_cfg)
