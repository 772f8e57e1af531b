"""Offline calibration of the quantized all-reduce: per-site, per-rank channel ranges of a real model.

Each rank loads the checkpoint, applies tensor parallelism, and runs calibration prompts with a
`RangeRecorder` watching every reduction site; rank 0 writes the gathered ranges, versioned with a
fingerprint of the checkpoint and the TP degree. `wakeline llm calibrate` is the command line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# used when no calibration text is given: generic English in the register of the default models
DEFAULT_PROMPTS = [
    "The user said 'lights on' in the kitchen. Turn on the kitchen lights.",
    "In the beginning God created the heaven and the earth.",
    "Python's list type is a mutable sequence; the sort() method sorts the list in place.",
    "The code of the silver door is 4821. What is the code of the silver door?",
    "And the LORD spake unto Moses, saying, Speak unto the children of Israel.",
    "A dictionary maps hashable keys to arbitrary objects and is written with braces.",
    "Good morning! It is seven o'clock and the weather is clear.",
    "Blessed are the meek: for they shall inherit the earth.",
]


def checkpoint_fingerprint(model_dir: str | Path) -> str:
    """A short hash of config.json and the weight files' names, sizes and first MiB (fast for 100 GB)."""
    d = Path(model_dir)
    h = hashlib.sha256()
    h.update((d / "config.json").read_bytes())
    for f in sorted(d.glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def read_text_chunks(path: str | Path | None, n: int, chars: int = 2000, skip_frac: float = 0.0) -> list[str]:
    """n chunks of ~`chars` characters from a text file (.xz allowed), starting `skip_frac` into it."""
    if path is None:
        return (DEFAULT_PROMPTS * (n // len(DEFAULT_PROMPTS) + 1))[:n]
    opener = lzma.open if str(path).endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    start = int(len(text) * skip_frac)
    out = []
    for i in range(n):
        a = start + i * chars
        if a + chars > len(text):
            break
        out.append(text[a:a + chars])
    return out


def load_tp_model(model_dir: str, device: str | torch.device, dtype=None):
    """Load a checkpoint (mmap, CPU) and shard it for this rank; returns (model, tokenizer)."""
    from llm.loader import load_model
    from llm.parallel.state import get_tp
    from llm.parallel.tp import apply_tp
    from llm.tokenizer import Tokenizer

    if str(device) == "cuda":
        device = get_tp().device  # this rank's GPU (LOCAL_RANK), not cuda:0
    model, _ = load_model(model_dir, device="cpu", dtype=dtype if dtype is not None else torch.float32)
    apply_tp(model, device=device)
    return model, Tokenizer.from_dir(model_dir)


@torch.inference_mode()
def record_ranges(model, tok, prompts: list[str], max_tokens: int = 1024, ema: float = 0.9) -> dict:
    """Run prompts one by one with a RangeRecorder on comm; returns the gathered {site: [W, H]}."""
    from llm.parallel import comm
    from llm.parallel.quant_comm import RangeRecorder

    rec = RangeRecorder(ema=ema)
    comm.set_observer(rec)
    try:
        model.setup_caches(1, max_tokens)
        dev = model.device
        for p in prompts:
            ids = tok.encode(p)[:max_tokens]
            x = torch.tensor([ids], device=dev)
            model(x, torch.arange(len(ids), device=dev)[None], fresh=True)
    finally:
        comm.set_observer(None)
    return rec.gather()


def calibrate_rank(rank: int, world: int, model_dir: str, out: str, text: str | None, n_prompts: int,
                   max_tokens: int, device: str) -> dict:
    """One rank of `wakeline llm calibrate` (spawned, or under torchrun); rank 0 writes `out`."""
    from llm.parallel.quant_comm import Calibration, QuantCommConfig

    model, tok = load_tp_model(model_dir, device)
    prompts = read_text_chunks(text, n_prompts)
    ranges = record_ranges(model, tok, prompts, max_tokens)
    cal = Calibration(ranges, tp=world, checkpoint=checkpoint_fingerprint(model_dir), n_prompts=len(prompts),
                      meta={"text": os.path.basename(text) if text else "builtin", "max_tokens": max_tokens})
    summary = {"sites": len(ranges), "tp": world, "checkpoint": cal.checkpoint, "n_prompts": len(prompts)}
    if rank == 0:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        cal.save(out)
        hidden = next(iter(ranges.values())).shape[-1]
        k = QuantCommConfig().n_outliers(hidden)
        r = torch.stack([v.amax(0) for v in ranges.values()])  # [sites, H]
        top = r.topk(k, dim=-1).values.mean().item()
        summary.update(path=out, bytes=os.path.getsize(out), hidden=hidden, k=k,
                       outlier_range_over_median=top / r.median().item())
        log.info("calibration written: %s", json.dumps(summary))
    return summary
