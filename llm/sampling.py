"""Sampling parameters and the batched sampler (greedy, temperature, top-k, top-p, repetition penalty).

The arithmetic follows transformers' logits processors (RepetitionPenaltyLogitsProcessor,
TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper), so a request draws from the same
distribution as `generate(do_sample=True)`; the random stream is not torch's (issue #6):

- Tokens are drawn by Gumbel-max: token = argmax(warped_logits + g) with g = -log(-log(u)), which is
  an exact draw from softmax(warped_logits), the distribution HF's `torch.multinomial` draws from.
- u is counter-based: a pure function of (the request's seed, the index n of the token it is
  generating, the vocabulary index), computed by an integer hash (triple32) on the device, with no
  generator state. So a seeded request's tokens do not depend on what else is in the batch, nor on
  how many decode steps run per host sync: the CUDA-graph decode samples inside the graph, K steps
  back to back, and draws exactly what the one-step path draws. The same seed does not reproduce
  HF's (or this engine's pre-issue-#6) token sequence: same distribution, different random stream.
- u takes 23 bits (the centre of one of 2^23 equal cells, exact in fp32 and never 0 or 1), so the
  Gumbel noise lies in about [-2.81, 16.6]: the truncation changes no token's probability by more
  than ~1e-7.
- Unseeded requests get a random seed drawn when they are added (the engine does that).

Greedy rows (temperature 0) take the exact argmax (`greedy_tokens`) of their (penalised) logits.
`sample_tokens` works on per-row tensors of fixed shape, so the CUDA graphs capture it as it is;
the host's `sample` draws the same tokens from fewer values (see "the host path" below).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

M32 = 0xFFFFFFFF
_ROW_SALT, _VOCAB_SALT = 0x68E31DA4, 0xB5297A4D


@dataclass
class SamplingParams:
    """Per-request sampling. temperature 0 = greedy; top_k 0 = off; top_p 1 = off; seed None = random."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def truncates(self) -> bool:
        """Whether top-k or top-p cut the distribution (the sampler then sorts each row)."""
        return not self.greedy and (self.top_k > 0 or self.top_p < 1.0)


# ---- the counter-based random stream -----------------------------------------------------------
def _mul32(x, c: int):
    # (x * c) mod 2^32 without int64 overflow: x < 2^32 times 16-bit halves of c stays below 2^49
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & M32


def hash32(x):
    """triple32 (Chris Wellons' hash-prospector), a bijection of 32-bit values with near-ideal
    avalanche; `x` is a Python int or an int64 tensor holding values in [0, 2^32)."""
    x = x ^ (x >> 17)
    x = _mul32(x, 0xED5AD4BB)
    x = x ^ (x >> 11)
    x = _mul32(x, 0xAC4C1B51)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x31848BAB)
    return x ^ (x >> 14)


def seed_key(seed: int) -> int:
    """The 32-bit key of a seed (any int; taken mod 2^64)."""
    s = int(seed) & ((1 << 64) - 1)
    return hash32(hash32(s & M32) ^ (s >> 32))


@functools.lru_cache(maxsize=8)
def vocab_hash(vocab: int, device: torch.device) -> Tensor:
    """hash32 of each vocabulary index [V] (int64): precomputed, graphs read it as a constant."""
    return hash32(torch.arange(vocab, dtype=torch.int64, device=device) ^ _VOCAB_SALT)


def gumbel_noise(keys: Tensor, n: Tensor, table: Tensor) -> Tensor:
    """Gumbel(0, 1) noise [B, V] (fp32) as a pure function of (key, n, vocab index).

    Args: keys: [B] int64 seed keys (`seed_key`); n: [B] int64 index of the token being drawn;
    table: `vocab_hash(V)`.
    """
    row = hash32(keys ^ hash32((n & M32) ^ _ROW_SALT))  # [B]
    h = hash32(table[None] ^ row[:, None])  # [B, V]; a bijection of the vocab index per row
    return -torch.log(-torch.log(uniform(h)))


def uniform(h: Tensor) -> Tensor:
    """32-bit hashes (int64) -> fp32 uniforms in (0, 1): the centre of one of 2^23 equal cells."""
    # 23 bits: (j + 0.5) / 2^23 is exact in fp32; 24 would round the top cell to u = 1 (g = inf)
    return ((h >> 9).float() + 0.5) * (1.0 / (1 << 23))


# ---- warping ------------------------------------------------------------------------------------
def warp_rows(logits: Tensor, temperature: Tensor, top_k: Tensor, min_cum: Tensor, truncate: bool = True) -> Tensor:
    """Temperature, then top-k, then top-p, per row of `logits` [B, V]; filtered entries -> -inf.

    Args: temperature: [B] (0 = greedy row, left unscaled); top_k: [B] int64 (0 = off);
    min_cum: [B] = 1 - top_p (0 = off): HF drops the tokens whose ascending cumulative probability
    is <= it; truncate: False skips top-k/top-p (every row has them off) and so the sort.
    """
    x = logits / torch.where(temperature > 0, temperature, 1.0)[:, None]
    if not truncate:
        return x
    V = x.shape[-1]
    s, idx = torch.sort(x, dim=-1, stable=True)  # ascending, as HF's top-p
    k = top_k.clamp(0, V)[:, None]
    kth = s.gather(1, (V - k).clamp(max=V - 1))  # the k-th largest value
    s = s.masked_fill((k > 0) & (s < kth), float("-inf"))  # HF top-k keeps ties with the k-th
    cum = s.softmax(-1).cumsum(-1)
    remove = (cum <= min_cum[:, None]) & (min_cum > 0)[:, None]
    remove[:, -1] = False  # keep at least the most likely token
    remove |= s == float("-inf")
    return x.masked_fill(torch.zeros_like(remove).scatter_(1, idx, remove), float("-inf"))


def penalize(logits: Tensor, seen: Tensor, penalty: Tensor) -> Tensor:
    """HF repetition penalty on the ids marked in `seen` [B, V] (bool): positive logits are divided
    by the row's `penalty` [B], negative ones multiplied; penalty 1 leaves a row exactly as it is."""
    p = penalty[:, None]
    return torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)


def greedy_tokens(logits: Tensor) -> Tensor:
    """argmax over the last dim of `logits` [B, V]: the first index of the maximum, as torch.argmax.

    In two stages (the maximum of each chunk of `V`, then the first chunk holding the overall
    maximum) because one long row is a one-block reduction on a GPU: 27 us for a 128k vocabulary
    on an H100, a few us in two stages. Both stages keep the first maximum, so the result is
    exactly torch.argmax's. The CUDA-graph decode and the host sampler both call this.
    """
    B, V = logits.shape
    chunk = next((c for c in (512, 256, 128) if V % c == 0 and V // c >= 8), 0)
    if not chunk:
        return logits.argmax(-1)
    vals, idx = logits.view(B, V // chunk, chunk).max(-1)  # [B, C]
    best = vals.argmax(-1, keepdim=True)  # [B, 1]: the first chunk holding the maximum
    return (best * chunk + idx.gather(-1, best)).squeeze(-1)


def draw_tokens(logits: Tensor, x: Tensor, ints: Tensor, floats: Tensor, table: Tensor) -> Tensor:
    """The draw of `sample_tokens`: Gumbel-max on the warped logits `x` [B, V] for sampled rows, the
    argmax of `logits` for greedy ones. All elementwise and reductions: what the graphs compile
    (inductor's split scan for the top-p cumsum over [8, 128k] failed to generate code on an H100
    with torch 2.11, so the warping stays eager)."""
    drawn = greedy_tokens(x + gumbel_noise(ints[1], ints[0], table))
    return torch.where(floats[0] > 0, drawn, greedy_tokens(logits))


def sample_tokens(logits: Tensor, ints: Tensor, floats: Tensor, table: Tensor, seen: Tensor | None = None,
                  truncate: bool = True, draw=draw_tokens) -> Tensor:
    """One token per row of `logits` [B, V] (fp32): the sampler of the host and of the graphs.

    Args: ints: [3, B] int64 rows (n, seed key, top_k) and floats: [3, B] fp32 rows (temperature,
    1 - top_p, repetition penalty), as `row_params` lays them out; table: `vocab_hash(V)`; seen:
    [B, V] bool ids to penalise (None: no penalty); truncate: whether any row uses top-k/top-p;
    draw: `draw_tokens` or a compiled version of it.
    """
    if seen is not None:
        logits = penalize(logits, seen, floats[2])
    x = warp_rows(logits, floats[0], ints[2], floats[1], truncate)
    return draw(logits, x, ints, floats, table)


def row_params(params: list[SamplingParams], keys: list[int], steps: list[int]) -> tuple[list, list]:
    """The per-row (ints, floats) lists of `sample_tokens` for these requests: ints (n = `steps`,
    seed key, top_k), floats (temperature, 1 - top_p, repetition penalty)."""
    ints = [list(steps), list(keys), [p.top_k if p.top_k > 0 else 0 for p in params]]
    floats = [[float(p.temperature) for p in params], [1.0 - p.top_p for p in params],
              [float(p.repetition_penalty) for p in params]]
    return ints, floats


def warp(logits: Tensor, p: SamplingParams) -> Tensor:
    """Temperature, then top-k, then top-p, on one row [V] (`warp_rows` of a batch of one)."""
    ints, floats = row_params([p], [0], [0])
    t = torch.tensor(floats, dtype=torch.float32, device=logits.device)
    k = torch.tensor(ints[2], device=logits.device)
    return warp_rows(logits[None].float(), t[0], k, t[1], p.truncates)[0]


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """HF semantics on one row [V]: logits of the ids in `seen` (1-d) divided by `penalty` if
    positive, multiplied if negative."""
    mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    mask[seen] = True
    return penalize(logits[None], mask[None], torch.tensor([penalty], device=logits.device))[0]


def sample_reference(logits: Tensor, params: list[SamplingParams], histories: list[list[int]], keys: list[int],
           steps: list[int]) -> list[int]:
    """`sample` in the graphs' formulation (`sample_tokens` over the whole vocabulary): what the host
    path must equal token for token, and the path of logits on a GPU.

    Args: params: each row's SamplingParams; histories: each row's prompt + generated ids (read
    for rows with a repetition penalty); keys: each row's `seed_key`; steps: the index of the
    token each row draws now (its number of generated tokens so far).
    """
    if all(p.greedy and p.repetition_penalty == 1.0 for p in params):
        return greedy_tokens(logits).tolist()
    dev, V = logits.device, logits.shape[-1]
    ints, floats = row_params(params, keys, steps)
    seen = None
    if any(p.repetition_penalty != 1.0 for p in params):
        seen = torch.zeros(len(params), V, dtype=torch.bool, device=dev)
        for i, p in enumerate(params):
            if p.repetition_penalty != 1.0 and histories[i]:
                seen[i, torch.tensor(sorted(set(histories[i])), device=dev)] = True
    toks = sample_tokens(logits.float(), torch.tensor(ints, device=dev),
                         torch.tensor(floats, dtype=torch.float32, device=dev), vocab_hash(V, dev), seen,
                         any(p.truncates for p in params))
    return toks.tolist()


# ---- the host path ------------------------------------------------------------------------------
# `sample_tokens` warps and draws over the whole vocabulary: a stable sort of every truncated row
# (0.44 ms at V = 8k, 10 ms at 128k on one core here) and V hashes per sampled row, in int64 torch
# ops of a few us each. A row's token is the argmax of x + g over the tokens that survive top-k and
# top-p, so the host computes the same token from fewer values, mostly in numpy (whose small-array
# ops, argmax, sort and partition are several times faster than torch's on the CPU): top-k from the
# k largest (a sampled threshold, one compare pass, then a check for ties at the k-th); top-p alone
# from numpy's sort of the values (the top-p sums need the whole sorted row), then the ids of the
# kept tail only; the top-p sums of top-k rows on a short lane-aligned row (`_nucleus`); the noise
# only at the surviving ids. Every float operation is the reference's on the same values (the logs,
# softmax and cumsum still run in torch), so kept sets and tokens are equal bit for bit
# (tests/llm/test_sampling.py compares them over many seeds, parameters, batches and exact top-p
# boundaries). The CUDA-graph path keeps `sample_tokens`: static shapes, no host round trip.
_TOPK_MAX = 1024  # larger top-k rows take the sort path
_LANES = 64  # a padded row keeps each value's position mod 64 (`_nucleus`)
_NEG_INF = np.float32("-inf")
_BLOCK = 1 << 16  # values per block of `_in_blocks`


def sample(logits: Tensor, params: list[SamplingParams], histories: list[list[int]], keys: list[int],
           steps: list[int]) -> list[int]:
    """One next token per row of `logits` [B, V] (fp32), on the host's schedule (one sync).

    Args: params: each row's SamplingParams; histories: each row's prompt + generated ids (read
    for rows with a repetition penalty); keys: each row's `seed_key`; steps: the index of the
    token each row draws now (its number of generated tokens so far).

    The tokens are `sample_reference`'s (the graphs' formulation), computed from fewer values on the
    CPU; logits on a GPU take `sample_reference` itself.
    """
    if logits.device.type != "cpu":
        return sample_reference(logits, params, histories, keys, steps)
    with _one_thread():
        return _sample_host(logits, params, histories, keys, steps)


@contextlib.contextmanager
def _one_thread():
    """torch's intra-op threads off for the host path's few torch ops (logs, softmax, cumsum): they are
    small and memory-bound, and on a busy host (this CI box: 2 cores, other jobs) every parallel
    region of 2 OpenMP threads stalled for 5-7 ms, 100x the whole draw. Results do not depend on the
    thread count (elementwise ops; softmax and cumsum split rows, never a row)."""
    n = torch.get_num_threads()
    if n == 1 or not _openmp():
        yield
        return
    # ~0.1 us each way; process-wide for MKL and pthreadpool, so torch work on another thread during
    # the draw runs single-threaded too (the engine samples between forwards, on one thread)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@functools.cache
def _openmp() -> bool:
    # the native thread pool warns when resized after use; OpenMP (Linux and macOS wheels) does not
    return torch.__config__.parallel_info().rsplit("ATen parallel backend:", 1)[-1].strip().startswith("OpenMP")


def _sample_host(logits: Tensor, params: list[SamplingParams], histories: list[list[int]], keys: list[int],
                 steps: list[int]) -> list[int]:
    x = logits.detach().float()
    if any(p.repetition_penalty != 1.0 for p in params):
        x = _penalized(x, params, histories)
    xn = x.numpy()
    if all(p.greedy for p in params):
        return xn.argmax(-1).tolist()  # torch.argmax's first maximum, 20x faster on the CPU
    V = xn.shape[-1]
    kmax = min(_TOPK_MAX, V // 8)
    groups: dict[str, list[int]] = {"greedy": [], "plain": [], "topk": [], "sort": []}
    for i, p in enumerate(params):
        kind = "greedy" if p.greedy else "plain" if not p.truncates else "topk" if 0 < p.top_k <= kmax else "sort"
        groups[kind].append(i)
    out = [0] * len(params)
    for kind, rows in groups.items():
        if not rows:
            continue
        whole = len(rows) == len(params)
        w = xn if whole else xn[rows]
        if kind == "greedy":
            toks = w.argmax(-1)
        else:
            ps = params if whole else [params[i] for i in rows]
            t, k, mc = _settings(tuple((p.temperature, p.top_k, p.top_p) for p in ps))
            row = _row_hash([keys[i] for i in rows], [steps[i] for i in rows])
            if kind == "topk":
                toks = _draw(*_topk(w, t, k, mc), row, V)
            else:
                toks = _in_blocks(_plain if kind == "plain" else _sorted_draw, w, t, k, mc, row)
        if whole:
            return toks.tolist()
        for i, tok in zip(rows, toks.tolist(), strict=True):
            out[i] = tok
    return out


@functools.lru_cache(maxsize=1024)
def _settings(rows: tuple[tuple[float, int, float], ...]) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(temperature [b, 1] fp32 or None when all are 1, top_k [b] int64, 1 - top_p [b] fp32) of rows
    of (temperature, top_k, top_p): the fp32 values `row_params` gives the reference."""
    t = np.array([[r[0]] for r in rows], dtype=np.float32)
    k = np.array([r[1] for r in rows], dtype=np.int64)
    mc = np.array([1.0 - r[2] for r in rows], dtype=np.float32)
    for a in (t, k, mc):
        a.flags.writeable = False
    return (None if (t == 1).all() else t), k, mc


def _penalized(logits: Tensor, params: list[SamplingParams], histories: list[list[int]]) -> Tensor:
    # `penalize` at the seen ids only: the same fp32 multiply or divide per id, no [B, V] mask
    V = logits.shape[-1]
    rows = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0 and histories[i]]
    out = torch.from_numpy(np.array(logits.numpy(), order="C"))  # a copy, and no torch thread pool
    if not rows:
        return out
    ids = np.array(histories[rows[0]] if len(rows) == 1 else np.concatenate([histories[i] for i in rows]),
                   dtype=np.int64)
    if ids.min() < 0 or ids.max() >= V:
        raise IndexError(f"a history holds an id outside the vocabulary of {V}")
    # repeated ids need no dedup: every copy writes the value computed from the unpenalised logit
    flat = ids + np.repeat(np.array(rows) * V, [len(histories[i]) for i in rows])
    pen = np.array([p.repetition_penalty for p in params], dtype=np.float32)[flat // V]
    view = out.numpy().reshape(-1)
    v = view[flat]
    view[flat] = np.where(v < 0, v * pen, v / pen)
    return out


def _scaled(x: np.ndarray, t: np.ndarray | None) -> np.ndarray:
    """x / temperature per row, the fp32 division of `warp_rows` (None: every row at 1, exact)."""
    return x if t is None else x / t


def _hash32_np(x: np.ndarray) -> np.ndarray:
    """`hash32` in place on a uint32 array (wrapping multiplies, logical shifts)."""
    x ^= x >> 17
    x *= np.uint32(0xED5AD4BB)
    x ^= x >> 11
    x *= np.uint32(0xAC4C1B51)
    x ^= x >> 15
    x *= np.uint32(0x31848BAB)
    x ^= x >> 14
    return x


@functools.lru_cache(maxsize=8)
def _vocab_hash_np(vocab: int) -> np.ndarray:
    table = vocab_hash(vocab, torch.device("cpu")).numpy().astype(np.uint32)
    table.flags.writeable = False
    return table


def _row_hash(keys: list[int], steps: list[int]) -> np.ndarray:
    """The per-row hash of `gumbel_noise` [b] (uint32): Python ints for a few rows (1-2 us a row),
    numpy for more (~15 us whatever the count)."""
    if len(keys) <= 8:
        return np.array([hash32(k ^ hash32((n & M32) ^ _ROW_SALT)) for k, n in zip(keys, steps, strict=True)],
                        dtype=np.uint32)
    n = np.array([s & M32 for s in steps], dtype=np.uint32) ^ np.uint32(_ROW_SALT)
    return _hash32_np(np.array(keys, dtype=np.uint32) ^ _hash32_np(n))


def _gumbel(row: np.ndarray, ids: np.ndarray | None, vocab: int) -> np.ndarray:
    """`gumbel_noise` at the vocabulary ids [b, M] (None: all of them), bit for bit: the integer and
    exact float steps in numpy, the two logs in torch (numpy's log rounds differently)."""
    table = _vocab_hash_np(vocab)
    h = (table[None] if ids is None else table[ids]) ^ row[:, None]
    _hash32_np(h)
    h >>= 9
    u = h.astype(np.float32)
    u += np.float32(0.5)
    u *= np.float32(1.0 / (1 << 23))
    t = torch.from_numpy(u)
    t.log_()
    np.negative(u, out=u)
    t.log_()
    return np.negative(u, out=u)


def _in_blocks(fn, x: np.ndarray, t: np.ndarray | None, k: np.ndarray, mc: np.ndarray,
               row: np.ndarray) -> np.ndarray:
    """fn(x, t, k, mc, row) -> tokens, over blocks of rows of ~64k values: the ~20 passes of the
    plain and top-p draws over each block then run in the cache (4x at B = 32, V = 128k)."""
    step = max(1, _BLOCK // x.shape[1])
    if len(x) <= step:
        return fn(x, t, k, mc, row)
    return np.concatenate([fn(x[a:a + step], None if t is None else t[a:a + step], k[a:a + step], mc[a:a + step],
                              row[a:a + step]) for a in range(0, len(x), step)])


def _plain(x: np.ndarray, t: np.ndarray | None, k: np.ndarray, mc: np.ndarray, row: np.ndarray) -> np.ndarray:
    """The draw of rows without top-k/top-p: every token is a candidate."""
    return (_scaled(x, t) + _gumbel(row, None, x.shape[-1])).argmax(-1)


def _sorted_draw(x: np.ndarray, t: np.ndarray | None, k: np.ndarray, mc: np.ndarray, row: np.ndarray) -> np.ndarray:
    return _draw(*_sorted(x, t, k, mc), row, x.shape[-1])


def _draw(vals: np.ndarray, ids: np.ndarray, keep: np.ndarray, row: np.ndarray, vocab: int) -> np.ndarray:
    """The Gumbel-max draw over candidates: vals [b, M] (warped logits) at ids [b, M], keep [b, M];
    the smallest id among equal maxima, as the argmax over the whole row."""
    v = np.where(keep, vals + _gumbel(row, ids, vocab), _NEG_INF)
    return np.where(v == v.max(-1, keepdims=True), ids, vocab).min(-1)


def _take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """np.take_along_axis(a, idx, -1) for 2-d arrays, without its ~10 us of Python."""
    return a[np.arange(len(a))[:, None], idx]


def _above(x: np.ndarray, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries of each row of x [b, V] that are >= tau [b, 1]: (values, ids) [b, max count],
    padded with (-inf, 0), and the counts [b]."""
    b, V = x.shape
    f = np.flatnonzero(x >= tau)  # 2-d np.nonzero is 7x slower
    if b == 1:
        return x.reshape(-1)[f][None], f[None], np.array([len(f)])
    r, c = np.divmod(f, V)
    counts = np.bincount(r, minlength=b)
    pos = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
    vals = np.full((b, int(counts.max())), _NEG_INF)
    ids = np.zeros(vals.shape, dtype=np.int64)
    vals[r, pos], ids[r, pos] = x.reshape(-1)[f], c
    return vals, ids, counts


def _largest(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, ids) [b, >= n] holding the n largest of each row of x [b, V], values descending (ties
    in any order), padded with (-inf, 0) after each row's count [b] of real ones. A threshold from
    every 16th value keeps ~2n + 64 candidates (all values >= it) for one compare pass and a small
    sort; a row the threshold leaves short takes a full partition."""
    b, V = x.shape
    sub = x[:, ::16]
    j = 2 * (n // 16) + 4
    vals = ids = None
    if j < sub.shape[1] and 32 * n < V:
        vals, ids, counts = _above(x, np.partition(sub, sub.shape[1] - j, axis=-1)[:, -j:].min(-1, keepdims=True))
        if counts.min() < n:
            vals = ids = None
    if vals is None:
        ids = np.argpartition(x, V - n, axis=-1)[:, V - n:]
        vals, counts = _take(x, ids), np.full(b, n)
    order = np.argsort(vals, axis=-1)[:, ::-1]
    return _take(vals, order), _take(ids, order), counts


def _topk(x: np.ndarray, t: np.ndarray | None, k: np.ndarray, mc: np.ndarray) -> tuple[np.ndarray, ...]:
    """The candidates (warped values, ids, kept) [b, M] of rows with 0 < top_k <= min(1024, V / 8)
    (and any top_p): the k largest and every token equal to the k-th (HF keeps ties), no sort."""
    # fl(l / t) is monotone in l: the largest logits, divided, are the largest warped values, and a
    # token outside the candidates is at most the smallest one: if that is below the k-th warped
    # value, the candidates hold every token >= it (ties included, as bf16 logits often have)
    vals, ids, counts = _largest(x, int(k.max()) + 1)
    vals = _scaled(vals, t)
    kth = _take(vals, k[:, None] - 1)
    if not (_take(vals, counts[:, None] - 1) < kth).all():
        w = _scaled(x, t)
        vals, ids, _ = _largest(w, int((w >= kth).sum(-1).max()))
    keep = vals >= kth
    if (mc > 0).any():
        return _nucleus(np.where(keep, vals, _NEG_INF), ids, mc, x.shape[-1])
    return vals, ids, keep


def _sort_keys(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """int64 keys whose ascending order is torch.sort(x, stable=True)'s: the value's bits mapped to
    a monotone int (-0.0 as 0.0: equal floats) in the high half, the id in the low half."""
    b = (x + np.float32(0.0)).view(np.int32)
    b ^= (b >> 31) & 0x7FFFFFFF
    return (b.astype(np.int64) << 32) | ids


def _nucleus(vals: np.ndarray, ids: np.ndarray, mc: np.ndarray, vocab: int) -> tuple[np.ndarray, ...]:
    """Top-p on the top-k survivors vals [b, C] (-inf = dropped) at ids [b, C]: (vals, ids, keep),
    sorted ascending.

    `warp_rows` takes the softmax of a whole sorted row whose dropped entries are -inf, so its values
    sit at the end of the row. exp(-inf) = 0 adds nothing to a sum, cumsum is sequential, but the
    softmax's sum may run in vector lanes (by position mod 8 with ATEN_CPU_CAPABILITY=default; the
    AVX2/AVX512 kernels here are shift-invariant): a row of -inf padding and the same values, of a
    length congruent to V mod 64, puts every value in its lane, hence gives the same sums.
    """
    order = np.argsort(_sort_keys(vals, ids), axis=-1)  # unique keys: any sort gives the stable order
    vals, ids = _take(vals, order), _take(ids, order)
    b, C = vals.shape
    P = C + (vocab - C) % _LANES
    if P < _LANES:
        P = min(vocab, P + _LANES)
    s = np.full((b, P), _NEG_INF)
    s[:, P - C:] = vals
    return vals, ids, np.arange(C) >= (_first_kept(s, mc) - (P - C))[:, None]


def _first_kept(s: np.ndarray, mc: np.ndarray) -> np.ndarray:
    """`warp_rows`' top-p removal on rows s [b, n] sorted ascending (after top-k): the index [b] of
    each row's first kept entry (the removed ones are a prefix: cum is nondecreasing, -inf first).
    torch's softmax and cumsum, so the sums are the reference's."""
    n = s.shape[-1]
    drop = np.zeros(len(s), dtype=np.int64)
    if (mc > 0).any():
        cum = torch.from_numpy(s).softmax(-1).cumsum(-1).numpy()
        drop = np.where(mc > 0, np.minimum((cum <= mc[:, None]).sum(-1), n - 1), 0)
    if s[:, 0].min() == _NEG_INF:
        drop = np.maximum(drop, (s == _NEG_INF).sum(-1))
    return drop


def _sorted(x: np.ndarray, t: np.ndarray | None, k: np.ndarray, mc: np.ndarray) -> tuple[np.ndarray, ...]:
    """The candidates (as `_topk`'s) of rows with top-p and no top-k (or a large one): the reference's
    arithmetic on the sorted values (numpy's float sort: the values of torch's stable sort), then
    the ids of the kept tail, ordered as the stable sort orders them (equal values by id)."""
    V = x.shape[-1]
    w = _scaled(x, t)
    s = np.sort(w, axis=-1)
    if k.any():
        kk = np.clip(k, 0, V)[:, None]
        s[(kk > 0) & (s < _take(s, np.minimum(V - kk, V - 1)))] = _NEG_INF
    first = _first_kept(s, mc)
    m = V - first  # kept per row; the entries >= the smallest kept value hold them (and ties before)
    vals, ids, _ = _above(w, _take(s, first[:, None]))
    order = np.argsort(_sort_keys(vals, ids), axis=-1)[:, -int(m.max()):]
    return _take(vals, order), _take(ids, order), np.arange(order.shape[1]) >= (order.shape[1] - m)[:, None]
