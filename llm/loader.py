"""Load a local Hugging Face checkpoint folder into `llm.model.Transformer`.

config.json -> ModelArgs; the model is built on the meta device; every *.safetensors shard is
memory-mapped and each tensor goes straight to the target device and dtype, renamed to our
module names (q/k/v -> packed `wqkv`, per-expert matrices -> stacked expert-store tensors); then
`load_state_dict(assign=True)` adopts those tensors without another copy.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open

from llm.model import ModelArgs, Transformer

DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_FFN = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2", "w1": "w1", "w2": "w2", "w3": "w3"}
_L = r"model\.layers\.(\d+)\."


class CheckpointError(ValueError):
    """The checkpoint folder does not hold what the model needs (names, shapes, dtypes)."""


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> bf16 on CUDA, fp32 elsewhere; strings like 'bf16', 'float16' are accepted."""
    if dtype is None or dtype in ("auto", ""):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise CheckpointError(f"unsupported dtype {dtype}; use bf16, fp16 or fp32")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise CheckpointError(f"unsupported dtype {dtype!r}; use one of {sorted(DTYPES)}") from None


def load_config(path: str | Path) -> dict:
    """The checkpoint's config.json as a dict (FileNotFoundError names the folder)."""
    p = Path(path) / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"no config.json in {Path(path).resolve()} (expected a Hugging Face model folder)")
    return json.loads(p.read_text())


def safetensors_files(path: str | Path) -> list[Path]:
    """Shards named by model.safetensors.index.json, else every *.safetensors in the folder."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are missing: {missing}")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        extra = " (only PyTorch .bin weights found: convert them to safetensors)" if list(path.glob("*.bin")) else ""
        raise FileNotFoundError(f"no *.safetensors weights in {path.resolve()}{extra}")
    return files


def _target(name: str) -> tuple[str, str | None] | None:
    """Our parameter name for an HF tensor name, plus a part tag for tensors we concatenate/stack."""
    rules = [
        (r"model\.embed_tokens\.weight", lambda m: ("tok_embeddings.weight", None)),
        (r"model\.norm\.weight", lambda m: ("norm.weight", None)),
        (r"lm_head\.weight", lambda m: ("output.weight", None)),
        (_L + r"self_attn\.([qkv])_proj\.(weight|bias)",
         lambda m: (f"layers.{m[1]}.attention.wqkv.{m[3]}", "qkv:" + m[2])),
        (_L + r"self_attn\.o_proj\.(weight|bias)", lambda m: (f"layers.{m[1]}.attention.wo.{m[2]}", None)),
        (_L + r"self_attn\.([qk])_norm\.weight", lambda m: (f"layers.{m[1]}.attention.{m[2]}_norm.weight", None)),
        (_L + r"input_layernorm\.weight", lambda m: (f"layers.{m[1]}.attention_norm.weight", None)),
        (_L + r"post_attention_layernorm\.weight", lambda m: (f"layers.{m[1]}.ffn_norm.weight", None)),
        (_L + r"mlp\.(gate_proj|up_proj|down_proj)\.(weight|bias)",
         lambda m: (f"layers.{m[1]}.feed_forward.{_FFN[m[2]]}.{m[3]}", None)),
        (_L + r"(?:mlp|block_sparse_moe)\.gate\.weight", lambda m: (f"layers.{m[1]}.feed_forward.gate.weight", None)),
        (_L + r"(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight",
         lambda m: (f"layers.{m[1]}.feed_forward.experts.{_FFN.get(m[3], m[3])}", "expert:" + m[2])),
        (_L + r"mlp\.experts\.(gate_up_proj|down_proj)",  # transformers>=5 fused expert layout
         lambda m: (f"layers.{m[1]}.feed_forward.experts.{'w13' if m[2] == 'gate_up_proj' else 'w2'}", None)),
        (_L + r"mlp\.shared_expert\.(gate_proj|up_proj|down_proj)\.weight",
         lambda m: (f"layers.{m[1]}.feed_forward.shared_expert.{_FFN[m[2]]}.weight", None)),
        (_L + r"mlp\.shared_expert_gate\.weight",
         lambda m: (f"layers.{m[1]}.feed_forward.shared_expert_gate.weight", None)),
    ]
    for pat, fn in rules:
        m = re.fullmatch(pat, name)
        if m:
            return fn(m)
    return None


def read_state_dict(path: str | Path, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint under our names, on `device` in `dtype`."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    unknown = []
    dev = str(device) if device.type != "cuda" or device.index is not None else "cuda:0"
    for f in safetensors_files(path):
        with safe_open(str(f), framework="pt", device=dev) as st:
            for name in list(st.keys()):  # noqa: SIM118 (safe_open is not iterable)
                if _IGNORED.match(name):
                    continue
                tgt = _target(name)
                if tgt is None:
                    unknown.append(name)
                    continue
                t = st.get_tensor(name)
                if not t.is_floating_point():
                    raise CheckpointError(f"{f.name}: tensor {name} has dtype {t.dtype}; quantized "
                                          "checkpoints are not supported (need bf16/fp16/fp32)")
                key, part = tgt
                t = t.to(dtype)
                if part is None:
                    out[key] = t
                else:
                    parts[key][part] = t
    if unknown:
        raise CheckpointError(f"{len(unknown)} checkpoint tensors have no place in the model, e.g. {unknown[:4]}")
    for key, p in parts.items():
        if key.endswith(("wqkv.weight", "wqkv.bias")):
            if set(p) != {"qkv:q", "qkv:k", "qkv:v"}:
                raise CheckpointError(f"{key}: checkpoint has only {sorted(p)} of q/k/v projections")
            out[key] = torch.cat([p["qkv:q"], p["qkv:k"], p["qkv:v"]], dim=0)
        else:
            ids = sorted(int(k.split(":")[1]) for k in p)
            if ids != list(range(len(ids))):
                raise CheckpointError(f"{key}: experts {ids} are not numbered 0..{len(ids) - 1}")
            out[key] = torch.stack([p[f"expert:{i}"] for i in ids])
    for key in [k for k in out if k.endswith("experts.w13")]:
        out[key[:-3] + "w1"], out[key[:-3] + "w3"] = out.pop(key).chunk(2, dim=1)
    return out


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: str | torch.dtype | None = None) -> tuple[Transformer, ModelArgs]:
    """Build the model described by `path/config.json` and load its safetensors weights.

    Args: path: a local Hugging Face model folder; device: where the weights go; dtype: None
    (bf16 on CUDA, fp32 on CPU), a torch dtype or a name such as 'bf16'.
    """
    device = torch.device(device)
    dtype = resolve_dtype(dtype, device)
    args = ModelArgs.from_hf_config(load_config(path))
    with torch.device("meta"):
        model = Transformer(args)
    expected = {k: v for k, v in model.state_dict().items()}
    sd = read_state_dict(path, device, dtype)
    if args.tie_word_embeddings or "output.weight" not in sd:
        args.tie_word_embeddings = True
        if "tok_embeddings.weight" in sd:
            sd["output.weight"] = sd["tok_embeddings.weight"]
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing or extra:
        raise CheckpointError(f"checkpoint does not match the config: missing {missing[:6]}"
                              f"{' ...' if len(missing) > 6 else ''}, unexpected {extra[:6]}")
    for k, t in sd.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"shape mismatch for {k}: checkpoint {tuple(t.shape)}, "
                                  f"config expects {tuple(expected[k].shape)}")
    model.load_state_dict(sd, strict=True, assign=True)
    if args.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.rope_cos = torch.empty(0, device=device)
    model.rope_sin = torch.empty(0, device=device)
    return model.eval().requires_grad_(False), args
