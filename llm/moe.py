"""Mixture-of-experts layer with a pluggable expert store and a routing observer.

The layer owns the router (`gate`) and, for Qwen2-MoE, the shared expert and its sigmoid gate;
the routed experts' weights come from an `ExpertStore`. `ResidentExpertStore` keeps all of them
on the model's device as stacked [E, ...] parameters; an offloading store (expert cache) can
replace it later by implementing the same three methods. Every forward reports its routing
decisions (expert ids per token) to `observer(layer_id, topk_ids)` when one is set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RoutingObserver = Callable[[int, Tensor], None]  # (layer_id, topk_ids [T, k]) -> None


@dataclass
class MoEArgs:
    num_experts: int
    top_k: int
    intermediate_size: int
    norm_topk_prob: bool = True
    shared_intermediate_size: int | None = None  # Qwen2-MoE shared expert
    topk_weights_in_model_dtype: bool = True  # Mixtral keeps them fp32 until the sum

    def __post_init__(self):
        if not 0 < self.top_k <= self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be in 1..num_experts={self.num_experts}")


class ExpertStore(nn.Module):
    """Where routed experts' weights live. w1/w3: [I, D] (gate/up), w2: [D, I] (down)."""

    num_experts: int

    def expert(self, e: int) -> tuple[Tensor, Tensor, Tensor]:
        """(w1, w3, w2) of one expert, on the compute device."""
        raise NotImplementedError

    def gather(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Stacked (w1, w3, w2) for expert ids of any shape: [*ids.shape, I, D] / [*ids.shape, D, I]."""
        raise NotImplementedError

    def stacked(self) -> tuple[Tensor, Tensor, Tensor]:
        """All experts at once: [E, I, D], [E, I, D], [E, D, I]."""
        raise NotImplementedError


class ResidentExpertStore(ExpertStore):
    """Every expert resident on the model's device (state-dict names `...experts.w1/w2/w3`)."""

    def __init__(self, num_experts: int, dim: int, inter: int):
        super().__init__()
        self.num_experts = num_experts
        self.w1 = nn.Parameter(torch.empty(num_experts, inter, dim))  # [E, I, D]
        self.w3 = nn.Parameter(torch.empty(num_experts, inter, dim))  # [E, I, D]
        self.w2 = nn.Parameter(torch.empty(num_experts, dim, inter))  # [E, D, I]

    def expert(self, e: int):
        return self.w1[e], self.w3[e], self.w2[e]

    def gather(self, ids: Tensor):
        return self.w1[ids], self.w3[ids], self.w2[ids]

    def stacked(self):
        return self.w1, self.w3, self.w2


class MoE(nn.Module):
    # below this many tokens every expert runs on every token (static shapes: CUDA-graph friendly)
    dense_max_tokens = 64
    # on CUDA, prefill of tiny experts also runs all experts: 4x the FLOPs of top-2 of 8, but no host
    # sync and 3 batched GEMMs instead of 3 per expert (measured: the grouped path made the default
    # MoE's 1k-token prefill 2x slower than transformers on an H100)
    dense_max_macs = 1 << 31

    def __init__(self, dim: int, args: MoEArgs, layer_id: int, store: ExpertStore | None = None):
        super().__init__()
        self.args, self.layer_id = args, layer_id
        self.gate = nn.Linear(dim, args.num_experts, bias=False)
        self.experts = store or ResidentExpertStore(args.num_experts, dim, args.intermediate_size)
        if args.shared_intermediate_size:
            from llm.model import FeedForward  # model imports moe; import here to avoid a cycle

            self.shared_expert = FeedForward(dim, args.shared_intermediate_size)
            self.shared_expert_gate = nn.Linear(dim, 1, bias=False)
        else:
            self.shared_expert = None
        self.observer: RoutingObserver | None = None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Top-k routing weights and expert ids, both [T, k]."""
        logits = self.gate(x)  # [T, E]
        probs = torch.softmax(logits.float(), dim=-1)
        w, ids = torch.topk(probs, self.args.top_k, dim=-1)
        if self.args.norm_topk_prob:
            w = w / w.sum(dim=-1, keepdim=True)
        if self.args.topk_weights_in_model_dtype:
            w = w.to(x.dtype)
        return w, ids

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [T, D]
        w, ids = self.route(x)
        if self.observer is not None:
            self.observer(self.layer_id, ids)
        n_tok, k = ids.shape
        if n_tok * k < self.experts.num_experts:
            out = self._gathered(x, w, ids)
        elif n_tok <= self.dense_max_tokens or (x.is_cuda and n_tok * self._expert_macs() <= self.dense_max_macs):
            out = self._dense(x, w, ids)
        else:
            out = self._grouped(x, w, ids)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out.view(shape)

    def _expert_macs(self) -> int:
        w1 = self.experts.stacked()[0]  # [E, I, D]
        return w1.shape[0] * w1.shape[1] * w1.shape[2]

    def _gathered(self, x: Tensor, w: Tensor, ids: Tensor) -> Tensor:
        # few tokens: read only the chosen experts' weights
        w1, w3, w2 = self.experts.gather(ids)  # [T, k, I, D], [T, k, I, D], [T, k, D, I]
        h = F.silu(torch.einsum("td,tkid->tki", x, w1)) * torch.einsum("td,tkid->tki", x, w3)
        y = torch.einsum("tki,tkdi->tkd", h, w2)  # [T, k, D]
        return (y * w[..., None]).sum(dim=1).to(x.dtype)

    def _dense(self, x: Tensor, w: Tensor, ids: Tensor) -> Tensor:
        w1, w3, w2 = self.experts.stacked()
        h = F.silu(torch.einsum("td,eid->eti", x, w1)) * torch.einsum("td,eid->eti", x, w3)
        y = torch.einsum("eti,edi->etd", h, w2)  # [E, T, D]
        dense_w = torch.zeros(x.shape[0], self.experts.num_experts, dtype=w.dtype, device=x.device)
        dense_w.scatter_(1, ids, w)  # [T, E]
        return torch.einsum("etd,te->td", y, dense_w.to(y.dtype)).to(x.dtype)

    def _grouped(self, x: Tensor, w: Tensor, ids: Tensor) -> Tensor:
        # many tokens (prefill): one matmul per expert over the tokens routed to it
        out = torch.zeros_like(x)
        flat = ids.flatten()
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.experts.num_experts).tolist()
        tok = order // ids.shape[1]
        wts = w.flatten()[order]
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            t_idx, t_w = tok[start:start + n], wts[start:start + n]
            start += n
            w1, w3, w2 = self.experts.expert(e)
            xe = x[t_idx]
            ye = F.linear(F.silu(F.linear(xe, w1)) * F.linear(xe, w3), w2)
            out.index_add_(0, t_idx, (ye * t_w[:, None]).to(x.dtype))
        return out


def set_routing_observer(model: nn.Module, observer: RoutingObserver | None) -> int:
    """Attach `observer` to every MoE layer of `model`; returns how many layers got it."""
    n = 0
    for m in model.modules():
        if isinstance(m, MoE):
            m.observer = observer
            n += 1
    return n
