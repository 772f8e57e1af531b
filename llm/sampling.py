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

import functools
from dataclasses import dataclass, field

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
    from llm.sampling_host import sample_host  # the host path builds on this module

    return sample_host(logits, params, histories, keys, steps)
