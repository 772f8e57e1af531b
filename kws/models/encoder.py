"""Causal, chunk-streaming audio encoder (dilated depthwise-separable TCN).

Log-mel frames (10 ms) are stacked in pairs (20 ms encoder frames), projected, then passed
through residual blocks of causal depthwise convolution + pointwise feed-forward. Nothing looks
ahead: an encoder frame depends on its own two feature frames and the past only. The streaming
state is one explicit tensor `cache` [B, S, C] holding, for every block, the last
(kernel - 1) * dilation inputs; `forward_chunk` consumes it and returns the next one, which is
what the ONNX export exposes as input/output.

Heads: CTC phoneme logits (39 ARPAbet + blank at index 0) and L2-normalised frame embeddings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EncoderArgs:
    n_mels: int = 40
    stack: int = 2
    dim: int = 160
    hidden: int = 320
    kernel: int = 5
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 1, 2, 4, 8])
    emb_dim: int = 64
    n_tokens: int = 40  # blank + 39 phonemes

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def cache_sizes(self) -> list[int]:
        return [(self.kernel - 1) * d for d in self.dilations]

    @property
    def cache_len(self) -> int:
        return sum(self.cache_sizes)


class Block(nn.Module):
    def __init__(self, a: EncoderArgs, dilation: int):
        super().__init__()
        self.pad = (a.kernel - 1) * dilation
        self.dw = nn.Conv1d(a.dim, a.dim, a.kernel, dilation=dilation, groups=a.dim)
        self.norm = nn.LayerNorm(a.dim)
        self.w1 = nn.Linear(a.dim, a.hidden)
        self.w2 = nn.Linear(a.hidden, a.dim)

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x [B, T, C]; cache [B, pad, C] = the last `pad` inputs before x
        full = torch.cat([cache, x], dim=1)  # [B, pad + T, C]
        new_cache = full[:, full.shape[1] - self.pad :]
        h = self.dw(full.transpose(1, 2)).transpose(1, 2)  # [B, T, C]
        h = self.w2(F.gelu(self.w1(self.norm(h))))
        return x + h, new_cache


class StreamingEncoder(nn.Module):
    def __init__(self, a: EncoderArgs):
        super().__init__()
        self.args = a
        self.in_norm = nn.LayerNorm(a.n_mels * a.stack)
        self.proj = nn.Linear(a.n_mels * a.stack, a.dim)
        self.blocks = nn.ModuleList(Block(a, d) for d in a.dilations)
        self.out_norm = nn.LayerNorm(a.dim)
        self.ctc = nn.Linear(a.dim, a.n_tokens)
        self.emb = nn.Linear(a.dim, a.emb_dim)

    def initial_cache(self, batch: int, device=None) -> torch.Tensor:
        return torch.zeros(batch, self.args.cache_len, self.args.dim, device=device)

    def forward_chunk(self, feats: torch.Tensor, cache: torch.Tensor):
        """feats [B, 2n, n_mels] (even length), cache [B, S, C] -> (logp [B,n,V], emb [B,n,E], cache)."""
        a = self.args
        b, t, m = feats.shape
        x = feats.reshape(b, t // a.stack, m * a.stack)  # [B, n, 2M]
        x = self.proj(self.in_norm(x))
        caches, off = [], 0
        for blk, size in zip(self.blocks, a.cache_sizes, strict=True):
            x, c = blk(x, cache[:, off : off + size])
            caches.append(c)
            off += size
        x = self.out_norm(x)
        logp = F.log_softmax(self.ctc(x), dim=-1)
        emb = F.normalize(self.emb(x), dim=-1)
        return logp, emb, torch.cat(caches, dim=1)

    def forward(self, feats: torch.Tensor):
        """Whole utterances: feats [B, T, n_mels] -> (logp [B, T//2, V], emb [B, T//2, E])."""
        t = feats.shape[1] - feats.shape[1] % self.args.stack
        logp, emb, _ = self.forward_chunk(feats[:, :t], self.initial_cache(feats.shape[0], feats.device))
        return logp, emb


@torch.no_grad()
def grow(src: StreamingEncoder, a: EncoderArgs) -> StreamingEncoder:
    """A larger encoder computing exactly what `src` computes, to warm-start more capacity.

    The feed-forward of every block may widen (new hidden units get fresh input weights and zero
    output weights) and new blocks may follow the old ones (zero output weights: identity at
    first). Everything else must match.
    """
    s = src.args
    fixed = ("n_mels", "stack", "dim", "kernel", "emb_dim", "n_tokens")
    if any(getattr(s, k) != getattr(a, k) for k in fixed) or a.hidden < s.hidden \
            or a.dilations[: len(s.dilations)] != s.dilations:
        raise ValueError(f"cannot grow {s} into {a}: only hidden and appended blocks may change")
    dst = StreamingEncoder(a)
    own = src.state_dict()
    for k, v in dst.state_dict().items():
        if k not in own:  # an appended block: identity until trained
            if k.endswith(("w2.weight", "w2.bias")):
                v.zero_()
            continue
        o = own[k]
        if k.endswith("w1.weight") or k.endswith("w1.bias"):
            v[: o.shape[0]] = o
        elif k.endswith("w2.weight"):
            v.zero_()
            v[:, : o.shape[1]] = o
        else:
            v.copy_(o)
    return dst


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
