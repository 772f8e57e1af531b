"""Train one default model on a wall-clock budget: corpus LM + retrieval + keyword-event chats.

    python -m llm.train.trainer --kind dense --data .llmdata --out OUT --seconds 300

The schedule (warm-up, cosine decay, sequence-length curriculum) is a function of elapsed time, so
a run always ends on time whatever the GPU. Writes OUT/<kind>/ (a Hugging Face folder) and
OUT/<kind>_metrics.json.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import math
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from llm.train import evaluate
from llm.train.models import build
from llm.train.synth import RetrievalTask, Sample, keyword_event_sample


@dataclass
class TrainConfig:
    """Everything a run depends on; `shape` overrides the model shape (tiny smoke runs)."""

    kind: str = "dense"
    data: str = ".llmdata"
    out: str = "out/train_llm"
    seconds: float = 300.0
    batch_tokens: int = 65536
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    answer_weight: float = 1.0  # extra loss term: mean CE over answer tokens of synthetic tasks
    p_retrieval: float = 0.3
    p_instruct: float = 0.12
    instruct_pool: int = 8192
    # (fraction of the budget elapsed, sequence length from then on)
    curriculum: list = field(default_factory=lambda: [[0.0, 512], [0.3, 1024], [0.5, 2048], [0.65, 4096],
                                                      [0.8, 8192]])
    eval_lengths: list = field(default_factory=lambda: [1024, 2048, 4096, 8192])
    eval_samples: int = 100
    val_tokens: int = 262144
    seed: int = 0
    shape: dict = field(default_factory=dict)
    init_from: str = ""  # a trained HF folder: copy every tensor whose name and shape match
    freeze_frac: float = 0.15  # copied tensors stay fixed for this fraction of the budget
    device: str = "cuda" if torch.cuda.is_available() else "cpu"


def load_ids(path: Path) -> np.ndarray:
    """A uint16 id array from an .npy.xz file written by scripts/llm_corpus/build.py."""
    return np.load(io.BytesIO(lzma.decompress(path.read_bytes())))


def seq_len_at(cfg: TrainConfig, frac: float) -> int:
    """The curriculum's sequence length once `frac` of the time budget has elapsed."""
    return int([n for f, n in cfg.curriculum if frac >= f][-1])


def make_row(cfg: TrainConfig, rng: np.random.Generator, n: int, train: np.ndarray, task: RetrievalTask,
             pool: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """n+1 token ids and a 0/1 mask over the n targets marking answer tokens."""
    u = rng.random()
    if u < cfg.p_retrieval:
        s = task.sample(rng, n + 1)
    elif u < cfg.p_retrieval + cfg.p_instruct:
        s = Sample([], [])
        while len(s.ids) < n + 1:
            e = pool[int(rng.integers(len(pool)))]
            s.answer_pos += [p + len(s.ids) for p in e.answer_pos]
            s.ids += e.ids
    else:
        start = int(rng.integers(0, len(train) - n - 2))
        return train[start:start + n + 1].astype(np.int64), np.zeros(n, np.float32)
    ids = np.zeros(n + 1, np.int64)
    m = min(len(s.ids), n + 1)
    ids[:m] = s.ids[:m]
    if m < n + 1:  # rare: pad a short synthetic sample with corpus text
        start = int(rng.integers(0, len(train) - n - 2))
        ids[m:] = train[start:start + n + 1 - m]
    mask = np.zeros(n, np.float32)
    pos = np.asarray([p for p in s.answer_pos if 0 < p <= n], np.int64)
    mask[pos - 1] = 1.0  # target index t predicts ids[t + 1]
    return ids, mask


def batches(cfg: TrainConfig, t0: float, train: np.ndarray, task: RetrievalTask, pool: list[Sample], out_q):
    """Producer thread: builds batches for the curriculum's current length until told to stop."""
    rng = np.random.default_rng(cfg.seed)
    while True:
        n = seq_len_at(cfg, (time.time() - t0) / cfg.seconds)
        rows = [make_row(cfg, rng, n, train, task, pool) for _ in range(max(1, cfg.batch_tokens // n))]
        item = (np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))
        out_q.put(item)


def warm_start(model, src: Path) -> set[str]:
    """Copy matching tensors (embeddings, attention, norms) from a trained checkpoint into `model`.

    The MoE model takes the dense model's attention this way: same names and shapes in the Llama
    and Mixtral layouts, so only the experts and the router start from scratch.
    """
    from safetensors.torch import load_file

    theirs = load_file(str(src / "model.safetensors"))
    ours = model.state_dict()
    hit = {k: v for k, v in theirs.items() if k in ours and ours[k].shape == v.shape}
    model.load_state_dict({**ours, **{k: v.to(ours[k].dtype) for k, v in hit.items()}})
    n = sum(v.numel() for v in hit.values())
    print(f"warm start from {src}: {len(hit)} tensors, {n / 1e6:.2f}M params copied", flush=True)
    _experts_from_dense(model, theirs)
    return set(hit)


@torch.no_grad()
def _experts_from_dense(model, dense: dict, scale: float = 4.0) -> None:
    """Expert e starts as the e-th slice of the dense MLP's neurons (down_proj scaled up: top-2 mixing
    of 2 of 8 slices sees a fraction of the dense output). Starts at loss ~8 instead of ~13."""
    sd, done = model.state_dict(), 0
    for k, gu in sd.items():
        if not k.endswith("mlp.experts.gate_up_proj"):  # transformers 5 fused layout [E, 2F, H]
            continue
        pre = k[: -len("mlp.experts.gate_up_proj")]
        names = [f"{pre}mlp.{n}_proj.weight" for n in ("gate", "up", "down")]
        if not all(n in dense for n in names):
            continue
        w1, w3, w2 = (dense[n].to(gu.dtype) for n in names)
        dn = sd[pre + "mlp.experts.down_proj"]
        n_exp, f = gu.shape[0], gu.shape[1] // 2
        step = w1.shape[0] // n_exp
        if step < f:
            continue
        for e in range(n_exp):
            idx = slice(e * step, e * step + f)
            gu[e, :f], gu[e, f:], dn[e] = w1[idx], w3[idx], w2[:, idx] * scale
        done += 1
    print(f"experts initialised from dense MLP slices in {done} layers", flush=True)


def lr_at(cfg: TrainConfig, step: int, frac: float) -> float:
    """Linear warm-up over steps, then cosine decay to 10% over the time budget."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train(cfg: TrainConfig) -> dict:
    """Train, save the Hugging Face folder, evaluate; returns the metrics dict."""
    torch.manual_seed(cfg.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    data, out = Path(cfg.data), Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(data / "tokenizer" / "tokenizer.json"))
    train_ids, val_ids = load_ids(data / "train_ids.npy.xz"), load_ids(data / "val_ids.npy.xz")
    model = build(cfg.kind, tok, **cfg.shape)
    copied: set[str] = set()
    if cfg.init_from:
        copied = warm_start(model, Path(cfg.init_from))
    model = model.to(cfg.device)
    is_moe = cfg.kind == "moe"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{cfg.kind}] {n_params / 1e6:.2f}M params, {len(train_ids) / 1e6:.1f}M train tokens, "
          f"device {cfg.device}", flush=True)
    groups = []
    for warm in (False, True):
        named = [(n, p) for n, p in model.named_parameters() if (n in copied) == warm]
        # Warm-started tensors wait until the new ones fit around them, so that the first
        # large gradients of random experts do not wash out the copied attention.
        hold = cfg.freeze_frac if warm else 0.0
        groups += [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": cfg.weight_decay, "hold": hold},
                   {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0, "hold": hold}]
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=cfg.device.startswith("cuda"))
    task = RetrievalTask(tok, train_ids)
    # Pre-tokenized keyword-event chats: drawing from a pool keeps the data thread ahead of the GPU.
    prng = np.random.default_rng(cfg.seed + 1)
    pool = [keyword_event_sample(tok, prng) for _ in range(cfg.instruct_pool)]
    q: queue.Queue = queue.Queue(maxsize=6)
    t0 = time.time()
    threading.Thread(target=batches, args=(cfg, t0, train_ids, task, pool, q), daemon=True).start()
    step, tokens, log = 0, 0, []
    amp = torch.autocast(device_type="cuda" if cfg.device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    model.train()
    while (frac := (time.time() - t0) / cfg.seconds) < 1.0:
        ids, mask = q.get()
        x = torch.from_numpy(ids).to(cfg.device, non_blocking=True)
        m = torch.from_numpy(mask).to(cfg.device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, frac) if frac >= g["hold"] else 0.0
        with amp:
            res = model(input_ids=x[:, :-1], output_router_logits=True) if is_moe else model(input_ids=x[:, :-1])
        ce = F.cross_entropy(res.logits.float().flatten(0, 1), x[:, 1:].flatten(), reduction="none")
        lm_loss = ce.mean()
        ans_loss = (ce * m.flatten()).sum() / m.sum().clamp(min=1.0)
        loss = lm_loss + cfg.answer_weight * ans_loss
        if is_moe and getattr(res, "aux_loss", None) is not None:
            loss = loss + model.config.router_aux_loss_coef * res.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += x[:, :-1].numel()
        if step % 25 == 0 or step == 1:
            el = time.time() - t0
            rec = {"step": step, "s": round(el, 1), "seq": int(x.shape[1] - 1), "lm": round(lm_loss.item(), 4),
                   "ans": round(ans_loss.item(), 4), "lr": round(lr_at(cfg, step, frac), 6),
                   "tok_s": round(tokens / el)}
            log.append(rec)
            print(f"[{cfg.kind}] {json.dumps(rec)}", flush=True)
    train_s = time.time() - t0
    print(f"[{cfg.kind}] trained {step} steps, {tokens / 1e6:.1f}M tokens in {train_s:.0f}s", flush=True)
    model_dir = out / cfg.kind
    evaluate.save_hf(model, tok, data / "tokenizer", model_dir)
    metrics = {"kind": cfg.kind, "params": n_params, "steps": step, "train_tokens": tokens,
               "train_seconds": round(train_s, 1), "config": asdict(cfg), "log": log,
               "device_name": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "cpu"}
    (out / f"{cfg.kind}_metrics.json").write_text(json.dumps(metrics, indent=1))
    model.eval()
    metrics.update(evaluate.evaluate_all(model, tok, val_ids, cfg))
    metrics["total_seconds"] = round(time.time() - t0, 1)
    (out / f"{cfg.kind}_metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"[{cfg.kind}] " + json.dumps({k: metrics[k] for k in ("val_ppl", "retrieval_acc", "instruct_acc")}),
          flush=True)
    return metrics


def main() -> None:
    """Command-line entry point; --shape takes JSON, e.g. '{"hidden": 64, "layers": 2}'."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["dense", "moe"], required=True)
    ap.add_argument("--data", default=".llmdata")
    ap.add_argument("--out", default="out/train_llm")
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--batch-tokens", type=int, default=65536)
    ap.add_argument("--curriculum", type=json.loads, default=None, help="JSON [[frac, len], ...]")
    ap.add_argument("--eval-lengths", type=json.loads, default=None, help="JSON [len, ...]")
    ap.add_argument("--eval-samples", type=int, default=100)
    ap.add_argument("--val-tokens", type=int, default=262144)
    ap.add_argument("--shape", type=json.loads, default={})
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-from", default="", help="HF folder whose matching tensors initialise the model")
    ap.add_argument("--p-retrieval", type=float, default=0.3)
    a = ap.parse_args()
    cfg = TrainConfig(kind=a.kind, data=a.data, out=a.out, seconds=a.seconds, batch_tokens=a.batch_tokens,
                      eval_samples=a.eval_samples, val_tokens=a.val_tokens, shape=a.shape, lr=a.lr, seed=a.seed,
                      init_from=a.init_from, p_retrieval=a.p_retrieval)
    if a.curriculum:
        cfg.curriculum = a.curriculum
    if a.eval_lengths:
        cfg.eval_lengths = a.eval_lengths
    train(cfg)


if __name__ == "__main__":
    main()
