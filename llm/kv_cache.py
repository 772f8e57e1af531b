"""Slot-based KV cache: one fixed row of `max_seq` positions per running request.

Why slots and not pages: the default models and the benchmark contexts are short (<= 8k), so a
fixed row per request wastes little memory, and with rows addressed by slot the decode step has
static shapes (CUDA graphs) and, when the running requests occupy slots 0..B-1, reads the cache
as a plain slice with no gather. The engine hands out the lowest free slot to keep that so.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class KVCache(nn.Module):
    def __init__(self, n_slots: int, max_seq: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None):
        super().__init__()
        shape = (n_slots, n_kv_heads, max_seq, head_dim)  # [slot, Hk, T, D]
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, slots: Tensor | None, k: Tensor, v: Tensor) -> None:
        """Write k, v [B, S, Hk, D] at positions `input_pos` [B, S] of rows `slots` [B] (None: 0..B-1)."""
        B, S = input_pos.shape
        if slots is None:
            slots = torch.arange(B, device=input_pos.device)
        rows = slots[:, None].expand(B, S)
        # advanced indices around a slice put the indexed dims first: the value is [B, S, Hk, D]
        self.k[rows, :, input_pos] = k.to(self.k.dtype)
        self.v[rows, :, input_pos] = v.to(self.v.dtype)

    def update_and_read(self, input_pos: Tensor, slots: Tensor | None, k: Tensor, v: Tensor,
                        kv_len: int) -> tuple[Tensor, Tensor]:
        """Write the new k, v and return the first `kv_len` positions of each row: [B, Hk, kv_len, D]."""
        self.update(input_pos, slots, k, v)
        B = input_pos.shape[0]
        if slots is None:
            return self.k[:B, :, :kv_len], self.v[:B, :, :kv_len]
        return self.k[slots, :, :kv_len], self.v[slots, :, :kv_len]
