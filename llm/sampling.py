"""Sampling parameters and the batched sampler (greedy, temperature, top-k, top-p, repetition penalty).

The arithmetic follows transformers' logits processors (RepetitionPenaltyLogitsProcessor,
TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper) so that a seeded request here and
there draws from the same distribution. Rows that are greedy and unpenalised take one batched
argmax; the others are processed row by row, each with its own generator (per-request seeds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


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


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """HF semantics: logits of seen ids are divided by `penalty` if positive, multiplied if negative."""
    score = logits.gather(-1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(-1, seen, score)


def warp(logits: Tensor, p: SamplingParams) -> Tensor:
    """Temperature, then top-k, then top-p, on one row [V]; filtered entries become -inf."""
    logits = logits / p.temperature
    if p.top_k > 0 and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum <= 1 - p.top_p
        remove[-1] = False  # keep at least the most likely token
        logits = logits.masked_fill(remove.scatter(-1, idx, remove), float("-inf"))
    return logits


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


def sample(logits: Tensor, params: list[SamplingParams], histories: list[list[int]],
           generators: list[torch.Generator | None]) -> list[int]:
    """One next token per row of `logits` [B, V] (fp32).

    Args: params: each row's SamplingParams; histories: each row's prompt + generated ids (for
    the repetition penalty); generators: each row's seeded generator (None: torch's default).
    """
    fast = [i for i, p in enumerate(params) if p.greedy and p.repetition_penalty == 1.0]
    out: list[int | None] = [None] * len(params)
    if len(fast) == len(params):
        return greedy_tokens(logits).tolist()
    if fast:
        for i, t in zip(fast, greedy_tokens(logits[fast]).tolist(), strict=True):
            out[i] = t
    for i, p in enumerate(params):
        if out[i] is not None:
            continue
        row = logits[i]
        if p.repetition_penalty != 1.0 and histories[i]:
            seen = torch.tensor(sorted(set(histories[i])), device=row.device)
            row = apply_repetition_penalty(row, seen, p.repetition_penalty)
        if p.greedy:
            out[i] = int(row.argmax())
            continue
        probs = torch.softmax(warp(row, p), dim=-1)
        out[i] = int(torch.multinomial(probs, 1, generator=generators[i]))
    return out  # type: ignore[return-value]
