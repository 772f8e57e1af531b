"""Megatron-style tensor parallelism applied to a built `llm.model.Transformer` (after gpt-fast tp.py).

- attention: `wqkv` is column-parallel (each of its q, k, v parts split by heads, so a rank keeps
  whole heads), `wo` row-parallel; the layer's `n_local_heads` / `n_local_kv_heads` are rewritten.
  When there are fewer KV heads than ranks (W % n_kv_heads == 0) each rank keeps the one KV head
  its query heads use.
- MLP: `w1` / `w3` column-parallel, `w2` row-parallel; MoE experts are split along the
  intermediate dimension (every rank keeps every expert, 1/W of each), router replicated.
- the two row-parallel outputs per layer are summed by `llm.parallel.comm.all_reduce` in forward
  hooks (sites "layers.{i}.attn" and "layers.{i}.mlp"); biases of row-parallel layers are added
  once, after the sum.
- vocabulary-parallel embedding and LM head: each rank keeps V/W rows (vocab padded to a multiple
  of W); the embedding's partial lookups are summed exactly (plain all-reduce: only one rank holds
  a non-zero row per token), the head's logits are all-gathered. Tied weights stay tied.
  `vocab_parallel=False` replicates both instead (cheaper in communication for small vocabularies).

Call `apply_tp` before `setup_caches` (the KV cache is sized by the local KV heads). Works with any
world size dividing n_heads, on one node or many (the group comes from `llm.parallel.state`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llm.parallel import comm
from llm.parallel.state import TPState, get_tp


class TPUnsupportedError(ValueError):
    """The model cannot be sharded over this many ranks (with the reason)."""


def _rows(t: Tensor, rank: int, w: int, dim: int = 0) -> Tensor:
    n = t.shape[dim]
    if n % w:
        raise TPUnsupportedError(f"size {n} along dim {dim} is not divisible by {w} ranks")
    return t.narrow(dim, rank * (n // w), n // w)


def _param(t: Tensor, device) -> nn.Parameter:
    if t.is_meta:
        # built on the meta device: allocate the shard uninitialised, to be loaded or filled later
        return nn.Parameter(torch.empty(t.shape, dtype=t.dtype, device=device), requires_grad=False)
    return nn.Parameter(t.detach().to(device).contiguous().clone(), requires_grad=False)


def _kv_heads(attn, rank: int, w: int) -> tuple[int, int, int]:
    """(first local kv head, number of local kv heads, n_local_heads) for this rank."""
    h, hk = attn.n_heads, attn.n_kv_heads
    if h % w:
        raise TPUnsupportedError(f"{h} attention heads are not divisible by {w} ranks")
    if hk % w == 0:
        return rank * (hk // w), hk // w, h // w
    if w % hk == 0:
        # more ranks than KV heads: each rank's query heads all read the same KV head
        return (rank * hk) // w, 1, h // w
    raise TPUnsupportedError(f"{hk} KV heads vs {w} ranks: need one to divide the other")


def _shard_attention(attn, i: int, st: TPState, device) -> None:
    if attn.qk_norm == "full":
        raise TPUnsupportedError("q/k RMSNorm over the whole projection (OLMoE) needs a cross-rank norm")
    r, w = st.rank, st.world_size
    d = attn.head_dim
    h, hk = attn.n_heads, attn.n_kv_heads
    k0, nk, nh = _kv_heads(attn, r, w)

    def split(t: Tensor) -> Tensor:
        q, k, v = t.split([h * d, hk * d, hk * d], dim=0)
        q = q.narrow(0, r * nh * d, nh * d)
        k = k.narrow(0, k0 * d, nk * d)
        v = v.narrow(0, k0 * d, nk * d)
        return torch.cat([q, k, v], dim=0)

    wqkv = attn.wqkv
    wqkv.weight = _param(split(wqkv.weight), device)
    if wqkv.bias is not None:
        wqkv.bias = _param(split(wqkv.bias), device)
    wqkv.out_features = wqkv.weight.shape[0]
    attn.wo.weight = _param(_rows(attn.wo.weight, r, w, dim=1), device)
    attn.wo.in_features = attn.wo.weight.shape[1]
    attn.n_local_heads, attn.n_local_kv_heads = nh, nk
    for name in ("q_norm", "k_norm"):
        m = getattr(attn, name, None)
        if m is not None:
            m.to(device)
    _reduce_output(attn.wo, f"layers.{i}.attn", device)


def _shard_ffn(ff, st: TPState, device) -> None:
    r, w = st.rank, st.world_size
    for lin in (ff.w1, ff.w3):
        lin.weight = _param(_rows(lin.weight, r, w, 0), device)
        if lin.bias is not None:
            lin.bias = _param(_rows(lin.bias, r, w, 0), device)
        lin.out_features = lin.weight.shape[0]
    ff.w2.weight = _param(_rows(ff.w2.weight, r, w, 1), device)
    ff.w2.in_features = ff.w2.weight.shape[1]


def _shard_moe(moe, st: TPState, device) -> None:
    r, w = st.rank, st.world_size
    store = moe.experts
    if not all(hasattr(store, n) for n in ("w1", "w2", "w3")):
        raise TPUnsupportedError(f"cannot shard expert store {type(store).__name__} (needs stacked w1/w2/w3)")
    store.w1 = _param(_rows(store.w1, r, w, 1), device)  # [E, I/W, D]
    store.w3 = _param(_rows(store.w3, r, w, 1), device)
    store.w2 = _param(_rows(store.w2, r, w, 2), device)  # [E, D, I/W]
    moe.gate.to(device)
    if moe.shared_expert is not None:
        _shard_ffn(moe.shared_expert, st, device)
        moe.shared_expert_gate.to(device)


def _reduce_output(mod: nn.Module, site: str, device) -> None:
    """Sum mod's output over the group after forward; a row-parallel bias is added once, after."""
    bias = None
    lin = mod if isinstance(mod, nn.Linear) else getattr(mod, "w2", None)
    if isinstance(lin, nn.Linear) and lin.bias is not None:
        bias = _param(lin.bias, device).data
        lin.bias = None
    mod._tp_bias = bias

    def hook(m, args, out):
        out = comm.all_reduce(out, site)
        return out if m._tp_bias is None else out + m._tp_bias

    mod._tp_hook = mod.register_forward_hook(hook)


class VocabParallelEmbedding(nn.Module):
    """Rows [rank*V/W, (rank+1)*V/W) of the embedding; the partial lookups are summed exactly."""

    def __init__(self, weight_shard: Tensor, start: int):
        super().__init__()
        self.weight = weight_shard
        self.start = start

    def forward(self, ids: Tensor) -> Tensor:
        n = self.weight.shape[0]
        local = ids - self.start
        inside = (local >= 0) & (local < n)
        y = F.embedding(torch.where(inside, local, 0), self.weight)
        y = y * inside.unsqueeze(-1).to(y.dtype)
        return comm.all_reduce_plain(y)


def _shard_vocab(model, st: TPState, device) -> None:
    r, w = st.rank, st.world_size
    emb_w = model.tok_embeddings.weight
    v = emb_w.shape[0]
    per = -(-v // w)
    tied = model.output.weight is emb_w

    def shard(t: Tensor) -> Tensor:
        t = t.detach()
        if per * w != v:
            t = torch.cat([t, t.new_zeros(per * w - v, t.shape[1])])
        return t.narrow(0, r * per, per)

    emb_shard = _param(shard(emb_w), device)
    model.tok_embeddings = VocabParallelEmbedding(emb_shard, r * per)
    out = model.output
    out.weight = emb_shard if tied else _param(shard(out.weight), device)
    out.out_features = per

    def gather(m, args, logits):
        return comm.all_gather(logits, dim=-1)[..., :v]

    out._tp_hook = out.register_forward_hook(gather)


def apply_tp(model: nn.Module, state: TPState | None = None, device: str | torch.device | None = None,
             vocab_parallel: bool = True) -> nn.Module:
    """Shard a built (full-weight, e.g. CPU or mmap-backed) model in place for this rank.

    Args:
        model: an `llm.model.Transformer` (wqkv/wo/w1/w2/w3, MoE with a stacked expert store).
        state: the group (default: `get_tp()`); world size 1 only moves the model to `device`.
        device: where the local shards live (default: the state's device).
        vocab_parallel: shard the embedding and LM head by vocabulary (else replicate them).
    Returns the same model, ready for `setup_caches`.
    """
    st = state or get_tp()
    device = torch.device(device) if device is not None else st.device
    if not st.enabled:
        return model.to_empty(device=device) if any(p.is_meta for p in model.parameters()) else model.to(device)
    for i, layer in enumerate(model.layers):
        _shard_attention(layer.attention, i, st, device)
        ff = layer.feed_forward
        if hasattr(ff, "experts"):
            _shard_moe(ff, st, device)
        else:
            _shard_ffn(ff, st, device)
        _reduce_output(ff, f"layers.{i}.mlp", device)
    if vocab_parallel:
        _shard_vocab(model, st, device)
    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device=device)  # meta-built: everything is filled (loaded or random) afterwards
    else:
        model.to(device)
    model.tp_world_size = st.world_size
    return model


def reduction_sites(model: nn.Module) -> list[str]:
    """The names of the model's reduction sites, in forward order (what calibration records)."""
    return [f"layers.{i}.{kind}" for i in range(len(model.layers)) for kind in ("attn", "mlp")]
