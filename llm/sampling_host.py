"""The host (CPU) path of `llm.sampling.sample`: the reference's tokens from fewer values.

`sample_tokens` warps and draws over the whole vocabulary: a stable sort of every truncated row
(0.44 ms at V = 8k, 10 ms at 128k on one core here) and V hashes per sampled row, in int64 torch
ops of a few us each. A row's token is the argmax of x + g over the tokens that survive top-k and
top-p, so the host computes the same token from fewer values, mostly in numpy (whose small-array
ops, argmax, sort and partition are several times faster than torch's on the CPU): top-k from the
k largest (a sampled threshold, one compare pass, then a check for ties at the k-th); top-p alone
from numpy's sort of the values (the top-p sums need the whole sorted row), then the ids of the
kept tail only; the top-p sums of top-k rows on a short lane-aligned row (`_nucleus`); the noise
only at the surviving ids. Every float operation is the reference's on the same values (the logs,
softmax and cumsum still run in torch), so kept sets and tokens are equal bit for bit
(tests/llm/test_sampling.py compares them over many seeds, parameters, batches and exact top-p
boundaries). The CUDA-graph path keeps `sample_tokens`: static shapes, no host round trip.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from torch import Tensor

from llm.sampling import _ROW_SALT, M32, SamplingParams, hash32, vocab_hash

_TOPK_MAX = 1024  # larger top-k rows take the sort path
_LANES = 64  # a padded row keeps each value's position mod 64 (`_nucleus`)
_NEG_INF = np.float32("-inf")
_BLOCK = 1 << 16  # values per block of `_in_blocks`


def sample_host(logits: Tensor, params: list[SamplingParams], histories: list[list[int]], keys: list[int],
                steps: list[int]) -> list[int]:
    """`llm.sampling.sample` for CPU logits (same arguments, same tokens as `sample_reference`)."""
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
