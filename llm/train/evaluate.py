"""Saving and evaluating the default models: perplexity, retrieval by length, keyword-event answers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from llm.train.synth import SYSTEM_PROMPT, RetrievalTask, format_keyword_event, keyword_event_sample
from llm.train.tokenizer import BOS, END, EOT, PAD, render_chat

SAMPLE_EVENTS = [
    ("lights on", "kitchen", "07:42"), ("stop music", "living room", "21:05"),
    ("what time is it", "bedroom", "06:30"), ("good night", "kids' room", "20:15"),
    ("hey wakeline", "office", "10:00"), ("open the door", "garage", "18:20"),
    ("volume up", "study", "16:45"), ("zorblax", "hallway", "12:00"),
]


def save_hf(model, tok: Tokenizer, tok_dir: Path, out_dir: Path) -> None:
    """Write a standard Hugging Face folder: bf16 safetensors, config, tokenizer, generation config."""
    from transformers import GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    was = next(model.parameters()).dtype
    model.config.use_cache = True
    if hasattr(model.config, "output_router_logits"):
        model.config.output_router_logits = False
    model.generation_config = GenerationConfig(
        bos_token_id=tok.token_to_id(BOS), eos_token_id=[tok.token_to_id(END), tok.token_to_id(EOT)],
        pad_token_id=tok.token_to_id(PAD), do_sample=False, max_new_tokens=64)
    model.to(torch.bfloat16).save_pretrained(str(out_dir), safe_serialization=True)
    model.to(was)
    # Older transformers releases (and simple loaders) read a top-level rope_theta.
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("rope_theta", float(model.config.to_dict().get("rope_theta")
                                       or cfg.get("rope_parameters", {}).get("rope_theta")))
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    for f in Path(tok_dir).iterdir():
        shutil.copy(f, out_dir / f.name)


@torch.no_grad()
def val_perplexity(model, val: np.ndarray, device: str, n_tokens: int, ctx: int = 1024, bs: int = 16) -> float:
    """exp(mean next-token CE) over non-overlapping `ctx` windows of held-out corpus text."""
    n_win = max(1, min(n_tokens, len(val) - 1) // ctx)
    tot, cnt = 0.0, 0
    for i in range(0, n_win, bs):
        rows = [val[j * ctx:j * ctx + ctx + 1] for j in range(i, min(n_win, i + bs))]
        rows = [r for r in rows if len(r) == ctx + 1]
        if not rows:
            break
        x = torch.from_numpy(np.stack(rows).astype(np.int64)).to(device)
        with _amp(device):
            logits = model(input_ids=x[:, :-1]).logits
        ce = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten(), reduction="sum")
        tot, cnt = tot + ce.item(), cnt + x[:, 1:].numel()
    return math.exp(tot / max(1, cnt))


def _amp(device: str):
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                          enabled=device.startswith("cuda"))


@torch.no_grad()
def answer_accuracy(model, samples: list, device: str, bs: int) -> float:
    """Fraction of samples whose every answer token is the greedy (argmax) prediction.

    Teacher-forced exact match equals greedy-decoding exact match: greedy decoding reproduces the
    answer iff each answer token is the argmax given the correct prefix.
    """
    hits = 0
    for i in range(0, len(samples), bs):
        chunk = samples[i:i + bs]
        n = max(len(s.ids) for s in chunk)
        x = torch.zeros(len(chunk), n, dtype=torch.long)
        for r, s in enumerate(chunk):
            x[r, :len(s.ids)] = torch.tensor(s.ids)
        with _amp(device):
            pred = model(input_ids=x.to(device)).logits.argmax(-1).cpu()
        for r, s in enumerate(chunk):
            pos = torch.tensor(s.answer_pos)
            hits += int(bool((pred[r, pos - 1] == x[r, pos]).all()))
    return hits / max(1, len(samples))


def retrieval_samples(tok: Tokenizer, val: np.ndarray, length: int, n: int, seed: int = 1234) -> list:
    """Held-out retrieval probes: val-corpus filler, one question, fixed seed per length."""
    task, rng = RetrievalTask(tok, val), np.random.default_rng(seed + length)
    return [task.sample(rng, length, n_questions=1) for _ in range(n)]


@torch.no_grad()
def generate(model, tok: Tokenizer, messages: list[dict[str, str]], device: str, max_new: int = 40) -> str:
    """Greedy chat reply (transformers' generate with its KV cache), up to <|end|>."""
    ids = tok.encode(render_chat(messages, add_generation_prompt=True)).ids
    x = torch.tensor([ids], device=device)
    with _amp(device):
        y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new,
                           eos_token_id=[tok.token_to_id(END), tok.token_to_id(EOT)],
                           pad_token_id=tok.token_to_id(PAD))
    return tok.decode(y[0, len(ids):].tolist(), skip_special_tokens=True).strip()


def evaluate_all(model, tok: Tokenizer, val: np.ndarray, cfg) -> dict:
    """Validation perplexity, retrieval accuracy per context length, keyword-event accuracy and samples."""
    dev = cfg.device
    res: dict = {"val_ppl": round(val_perplexity(model, val, dev, cfg.val_tokens), 3), "retrieval_acc": {}}
    for length in cfg.eval_lengths:
        bs = max(1, 16384 // length) if dev.startswith("cuda") else 2
        acc = answer_accuracy(model, retrieval_samples(tok, val, length, cfg.eval_samples), dev, bs)
        res["retrieval_acc"][str(length)] = round(acc, 3)
        print(f"[{cfg.kind}] retrieval@{length}: {acc:.3f}", flush=True)
    rng = np.random.default_rng(4321)  # a different stream from training's
    ev = [keyword_event_sample(tok, rng) for _ in range(cfg.eval_samples)]
    res["instruct_acc"] = round(answer_accuracy(model, ev, dev, 32), 3)
    res["samples"] = []
    for kw, room, t in SAMPLE_EVENTS:
        msgs = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": format_keyword_event(kw, room, None, t)}]
        res["samples"].append({"prompt": msgs[1]["content"], "answer": generate(model, tok, msgs, dev)})
    res["samples"].append({"prompt": "Who made heaven and earth?", "answer": generate(
        model, tok, [{"role": "user", "content": "Who made heaven and earth?"}], dev)})
    return res
