"""Training: CTC phoneme recognition + phoneme-prototype embeddings + DSP/SLiCK matcher + SAL.

One step on a batch of synthesized sentences:
- encoder -> CTC loss on the sentence's phonemes; frame embeddings pulled to the phoneme table
  (cross-entropy over table similarities of aligned frames). The table itself is an EMA of the
  averaged embeddings of frames aligned to each phoneme: the audio-compliant text encoder.
- per sentence three text rows: the positive (a random 1-3 word span), a confusable (1-3 phoneme
  edits, generated on the fly, with per-phoneme match labels) and an easy one (another sentence's
  span); DSP partitions give per-frame features, the matcher gives per-frame logits.
- streaming loss on those logits (plain CE, SAL or SAL x focal), utterance-level BCE on the max
  over frames, subsequence-level BCE on the per-phoneme logits at the anchor.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge.confusable import edit_phonemes
from edge.scoring import NMAX
from kws.data.utterance import random_word_span
from kws.matching import Matcher, dsp_partition, frame_targets, streaming_loss
from kws.models.encoder import EncoderArgs, StreamingEncoder, grow, num_params

log = logging.getLogger("wakeline.kws.train")
N_PHONES = 39
PAD_FEAT = math.log(1e-6)


@dataclass
class TrainConfig:
    name: str = "main"
    encoder: dict = field(default_factory=dict)  # EncoderArgs overrides
    loss: str = "sal_focal"  # ce | sal | sal_focal
    w_sim: float = 1.0  # DSP partition weights: (1, 0) DSP only, (0, 1) CTC only
    w_ctc: float = 1.0
    ctc_weight: float = 1.0  # weight of the CTC (phoneme recognition) loss in the total
    use_matcher: bool = True
    confusable: bool = True
    feat_aug: bool = True  # random spectral tilt + frequency masks on the log-mel features (training only)
    steps: int = 2000
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 100
    ema: float = 0.97
    warp: float = 0.0  # mel-axis stretch (VTLP) of up to +-warp in feature_augment
    # SpecAugment time masks: this many spans of up to time_mask_frames feature frames (10 ms) per
    # utterance set to its mean (0: none, the runs up to 17)
    time_masks: int = 0
    time_mask_frames: int = 8
    tau: float = 0.1
    # frames (20 ms) by which every alignment target trails the audio: the phoneme said at frame t is
    # the target of the embedding at t + label_delay, and the decision fires label_delay frames after
    # the keyword ends, so a causal encoder hears that much right context (target delay)
    label_delay: int = 0
    # weight of a ranking loss on the utterance-level logits: every positive row of the batch against
    # every confusable (hard) row of *other* utterances, softplus(hard - positive), a smooth pooled
    # AUC; within one clip the model ranks the spoken text first, pooled across clips it does not
    rank_weight: float = 0.0
    # share of hard rows that are the positive minus its first or last phoneme (a text the audio
    # literally contains); edit_phonemes makes such rows only ~3 % of the time, and these pairs
    # score at chance or below on every dev set (deletion at an edge, `kws eval`)
    edge_deletion: float = 0.0
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500
    max_minutes: float = 1e9
    init_from: str = ""  # a model dir (encoder.onnx + phone_table.npz) to warm-start the encoder and tables

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        d = json.loads(Path(path).read_text())
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def collate(examples: list[dict], device) -> dict:
    """Pad features; return tensors and the python-side labels."""
    t = max(len(e["feats"]) for e in examples)
    t += t % 2
    feats = np.full((len(examples), t, examples[0]["feats"].shape[1]), PAD_FEAT, np.float32)
    frames = np.full((len(examples), t // 2), -1, np.int64)
    for i, e in enumerate(examples):
        feats[i, : len(e["feats"])] = e["feats"]
        frames[i, : len(e["frames"])] = e["frames"]
    return {
        "feats": torch.from_numpy(feats).to(device),
        "frames": torch.from_numpy(frames).to(device),
        "lens": torch.tensor([len(e["frames"]) for e in examples], device=device),
        "any_frames": bool((frames >= 0).any()),
    }


def feature_augment(feats: torch.Tensor, gen: torch.Generator | None = None, max_tilt: float = 0.7,
                    masks: int = 2, max_width: int = 6, max_warp: float = 0.0, time_masks: int = 0,
                    max_time: int = 8) -> torch.Tensor:
    """Channel, band and speaker robustness on log-mel features [B, T, M], a batch at a time.

    First stretches the mel axis of each utterance by a random factor within 1 +- max_warp (vocal
    tract length perturbation: formants move, tempo does not), then adds a smooth random curve over the mel bins to each utterance (up to +-max_tilt in log units,
    ~6 dB: microphone and room colouring) and blanks `masks` random bands of up to `max_width` bins
    with the utterance's mean (SpecAugment's frequency masks), and `time_masks` random spans of up to
    `max_time` frames inside the utterance (not its padding) the same way (SpecAugment's time masks).
    """
    b, _, m = feats.shape
    dev = feats.device

    def rand(*shape):
        return torch.rand(*shape, generator=gen, device="cpu").to(dev)

    if max_warp > 0:
        alpha = 1 + (rand(b, 1) * 2 - 1) * max_warp
        src = (torch.arange(m, device=dev, dtype=feats.dtype)[None] * alpha).clamp(max=m - 1)  # [B, M]
        lo = src.floor().long().clamp(max=m - 2)
        frac = (src - lo.to(src.dtype))[:, None, :]
        idx = lo[:, None, :].expand(b, feats.shape[1], m)
        feats = torch.gather(feats, 2, idx) * (1 - frac) + torch.gather(feats, 2, idx + 1) * frac
    u = torch.arange(m, device=dev, dtype=feats.dtype) / (m - 1)
    k = torch.arange(1, 4, device=dev, dtype=feats.dtype)
    curve = ((rand(b, 3) * 2 - 1)[..., None] * torch.cos(math.pi * k[None, :, None] * u + math.pi * rand(b, 3, 1))).sum(1)
    curve = curve / curve.abs().amax(-1, keepdim=True).clamp(min=1e-6) * (rand(b, 1) * max_tilt)
    out = feats + curve[:, None, :]
    real = (feats > PAD_FEAT + 1e-3).to(feats.dtype)  # not the padding of shorter utterances
    mean = ((feats * real).sum(dim=(1, 2)) / real.sum(dim=(1, 2)).clamp(min=1))[:, None, None]
    bins = torch.arange(m, device=dev)[None]
    for _ in range(masks):
        w = (rand(b, 1) * (max_width + 1)).long()
        f0 = (rand(b, 1) * (m - w).clamp(min=1)).long()
        band = (bins >= f0) & (bins < f0 + w)  # [B, M]
        out = torch.where(band[:, None, :], mean, out)
    if time_masks:
        n_real = (feats > PAD_FEAT + 1e-3).any(-1).sum(1, keepdim=True)  # [B, 1]: padding is at the end
        tt = torch.arange(feats.shape[1], device=dev)[None]
        for _ in range(time_masks):
            w = (rand(b, 1) * (max_time + 1)).long()
            t0 = (rand(b, 1) * (n_real - w).clamp(min=1)).long()
            span = (tt >= t0) & (tt < t0 + w) & (tt < n_real)  # [B, T]
            out = torch.where(span[:, :, None], mean, out)
    return out


def pick_span(e: dict, rng: np.random.Generator) -> tuple[list[int], int]:
    """A random 1-3 word span with 2..NMAX phonemes: (phoneme ids, anchor frame)."""
    words = e["words"]
    for _ in range(10):
        w0, w1 = random_word_span(len(words), rng)
        p0, p1 = int(words[w0][0]), int(words[w1][1])
        if 2 <= p1 - p0 + 1 <= NMAX:
            return [int(x) for x in e["ids"][p0 : p1 + 1]], int(words[w1][2])
    w = words[-1]
    ids = [int(x) for x in e["ids"][max(int(w[1]) - NMAX + 1, int(w[0])) : int(w[1]) + 1]]
    return ids, int(w[2])


def build_rows(examples: list[dict], rng: np.random.Generator, confusable: bool, edge_deletion: float = 0.0):
    """Text rows per example: positive, hard (confusable or, without it, a second easy), easy.

    edge_deletion: probability that the hard row is the positive without its first or last phoneme
    (every phoneme left matches: sub_labels all 1, label 0); 0 draws nothing extra from `rng`.
    """
    rows = []  # (src, ids, label, anchor, sub_labels or None)
    spans = [pick_span(e, rng) for e in examples]
    b = len(examples)
    for i, (ids, anchor) in enumerate(spans):
        rows.append((i, ids, 1, anchor, [1] * len(ids)))
        if confusable and edge_deletion > 0 and len(ids) > 2 and rng.random() < edge_deletion:
            new = ids[1:] if rng.random() < 0.5 else ids[:-1]
            rows.append((i, new, 0, anchor, [1] * len(new)))
        elif confusable:
            new, mask = edit_phonemes(ids, rng)
            rows.append((i, new[:NMAX], 0, anchor, mask[:NMAX]))
        else:
            other = spans[(i + 2) % b][0] if b > 2 else ids[::-1]
            rows.append((i, other, 0 if other != ids else 1, anchor, None))
        other = spans[(i + 1) % b][0] if b > 1 else ids[::-1]
        rows.append((i, other, 0 if other != ids else 1, anchor, None))
    return rows


def rank_loss(logit: torch.Tensor, label: torch.Tensor, src: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """Mean softplus(l_hard - l_pos) over positive rows x hard rows (negatives with per-phoneme
    labels, i.e. generated confusables) of different source utterances: 0 when every positive
    outscores every other clip's confusable by a wide margin."""
    pos = label > 0
    neg = (label == 0) & hard
    diff = logit[neg][None, :] - logit[pos][:, None]  # [P, N]
    other = src[pos][:, None] != src[neg][None, :]
    if not other.any():
        return logit.sum() * 0
    return F.softplus(diff[other]).mean()


class Trainer:
    def __init__(self, cfg: TrainConfig, device: str = "cpu", out_dir: str | Path = "runs/kws"):
        self.cfg, self.device = cfg, torch.device(device)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.model = StreamingEncoder(EncoderArgs(**cfg.encoder)).to(self.device)
        self.matcher = Matcher().to(self.device)
        e = self.model.args.emb_dim
        self.table_emb = F.normalize(torch.randn(N_PHONES, e, device=self.device), dim=-1)
        self.table_logp = torch.full((N_PHONES, self.model.args.n_tokens), -math.log(40.0), device=self.device)
        if cfg.init_from:
            self._warm_start(Path(cfg.init_from))
        params = list(self.model.parameters()) + list(self.matcher.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
        self.step = 0
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.history: list[dict] = []
        self.elapsed_min = 0.0  # training time before a resume
        log.info("%s: encoder %d params, matcher %d params", cfg.name, num_params(self.model),
                 num_params(self.matcher))

    def lr_at(self, step: int, elapsed_min: float = 0.0) -> float:
        """Warmup then cosine decay over steps or over the time budget, whichever ends first."""
        c = self.cfg
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        frac = max((step - c.warmup) / max(1, c.steps - c.warmup), elapsed_min / c.max_minutes)
        return c.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    def _warm_start(self, model_dir: Path) -> None:
        from kws.export import encoder_from_onnx

        enc = encoder_from_onnx(model_dir / "encoder.onnx")
        if enc.args.to_dict() != self.model.args.to_dict():
            # a larger configured encoder starts as the old one, grown without changing its function
            enc = grow(enc, self.model.args)
            log.info("%s: grew the %s encoder into %s", self.cfg.name, model_dir, self.model.args)
        self.model.load_state_dict(enc.state_dict())
        tab = np.load(model_dir / "phone_table.npz")
        self.table_emb = torch.from_numpy(tab["emb"]).to(self.device)
        self.table_logp = torch.from_numpy(tab["logp"]).to(self.device)
        log.info("%s: warm start from %s", self.cfg.name, model_dir)

    @torch.no_grad()
    def _update_tables(self, emb, logp, frames):
        m = frames >= 0
        lab = frames[m]
        e, lp = emb[m], logp[m]
        cnt = torch.bincount(lab, minlength=N_PHONES).float()
        se = torch.zeros_like(self.table_emb).index_add_(0, lab, e)
        sl = torch.zeros_like(self.table_logp).index_add_(0, lab, lp)
        have = cnt > 0
        mean_e = se[have] / cnt[have, None]
        mean_l = sl[have] / cnt[have, None]
        a = self.cfg.ema
        # fresh tensors: the old tables are still referenced by this step's autograd graph
        self.table_emb, self.table_logp = self.table_emb.clone(), self.table_logp.clone()
        self.table_emb[have] = F.normalize(a * self.table_emb[have] + (1 - a) * mean_e, dim=-1)
        self.table_logp[have] = a * self.table_logp[have] + (1 - a) * mean_l

    def losses(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        c, dev = self.cfg, self.device
        bt = collate(examples, dev)
        if c.feat_aug and self.model.training:
            bt["feats"] = feature_augment(bt["feats"], self.gen, max_warp=c.warp, time_masks=c.time_masks,
                                          max_time=c.time_mask_frames)
        logp, emb = self.model(bt["feats"])  # [B, T, V], [B, T, E]
        t = logp.shape[1]
        lens = bt["lens"].clamp(max=t)
        tgt = [torch.as_tensor(e["ids"].astype(np.int64) + 1) for e in examples]
        ctc = F.ctc_loss(logp.transpose(0, 1), torch.cat(tgt).to(dev), lens,
                         torch.tensor([len(x) for x in tgt], device=dev), zero_infinity=True)
        frames = F.pad(bt["frames"], (c.label_delay, 0), value=-1)[:, :t]
        m = frames >= 0
        proto = F.cross_entropy(emb[m] @ self.table_emb.T / c.tau, frames[m]) if bt["any_frames"] else ctc * 0
        self._update_tables(emb.detach(), logp.detach(), frames)
        out = {"ctc": ctc, "proto": proto}
        if not c.use_matcher:
            return out  # DSP only: the partition score needs no trained matcher
        rows = build_rows(examples, self.rng, c.confusable, c.edge_deletion)
        r_n = len(rows)
        ids_np = np.zeros((r_n, NMAX), np.int64)
        sub_y_np = np.zeros((r_n, NMAX), np.float32)
        sub_m_np = np.zeros((r_n, NMAX), bool)
        for r, row in enumerate(rows):  # numpy here, one host-to-device copy per array below
            ids_np[r, : len(row[1])] = row[1]
            if row[4] is not None:
                sub_y_np[r, : len(row[4])] = row[4]
                sub_m_np[r, : len(row[4])] = True

        def dev_t(a):
            return torch.from_numpy(np.asarray(a)).to(dev, non_blocking=True)

        src = dev_t(np.array([r[0] for r in rows], np.int64))
        n = dev_t(np.array([len(r[1]) for r in rows], np.int64))
        ids, sub_y, sub_m = dev_t(ids_np), dev_t(sub_y_np), dev_t(sub_m_np)
        label = dev_t(np.array([r[2] for r in rows], np.int64))
        anchor = (dev_t(np.array([r[3] for r in rows], np.int64)) + c.label_delay).clamp(max=t - 1)
        q = self.table_emb[ids]
        dp, feats = dsp_partition(emb[src], logp[src], q, ids, n, c.w_sim, c.w_ctc,
                                  n_max=max(len(r[1]) for r in rows))
        mask = torch.arange(NMAX, device=dev)[None] < n[:, None]
        logits, sub = self.matcher(feats, mask[:, None].expand(-1, t, -1), dp, n[:, None].expand(-1, t))
        y, valid = frame_targets(anchor, label, t)
        inside = torch.arange(t, device=dev)[None] < lens[src][:, None]
        valid = valid & inside
        out["stream"] = streaming_loss(logits, y, valid, anchor, c.loss)
        utt_logit = torch.where(inside, logits, torch.full_like(logits, -1e4)).max(dim=1).values
        out["utt"] = F.binary_cross_entropy_with_logits(utt_logit, label.float())
        if c.rank_weight > 0 and c.confusable:
            out["rank"] = rank_loss(utt_logit, label, src, dev_t(np.array([r[4] is not None for r in rows])))
        sub_a = sub[torch.arange(len(rows), device=dev), anchor]  # [R, NMAX]
        out["sub"] = (F.binary_cross_entropy_with_logits(sub_a, sub_y, reduction="none") * sub_m).sum() / sub_m.sum().clamp(min=1)
        return out

    def train(self, data: list[dict], resume: bool = True) -> None:
        """Run until cfg.steps (or cfg.max_minutes), checkpointing to out_dir."""
        c = self.cfg
        ck = self.out / "ckpt.pt"
        if resume and ck.exists():
            self.load(ck)
            log.info("%s: resumed at step %d", c.name, self.step)
        t0 = time.time()
        self.model.train()
        self.matcher.train()
        while self.step < c.steps:
            idx = self.rng.integers(len(data), size=c.batch)
            for g in self.opt.param_groups:
                g["lr"] = self.lr_at(self.step, (time.time() - t0) / 60 + self.elapsed_min)
            ls = self.losses([data[i] for i in idx])
            total = (c.ctc_weight * ls["ctc"] + ls["proto"] + ls.get("stream", 0) + ls.get("utt", 0)
                     + 0.5 * ls.get("sub", 0) + c.rank_weight * ls.get("rank", 0))
            self.opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(list(self.model.parameters()) + list(self.matcher.parameters()), 5.0)
            self.opt.step()
            self.step += 1
            if self.step % c.log_every == 0 or self.step == c.steps:
                rec = {"step": self.step, "time_s": round(time.time() - t0, 1), "lr": round(g["lr"], 6),
                       **{k: round(float(v.detach()), 4) for k, v in ls.items()}}
                self.history.append(rec)
                log.info("%s %s", c.name, json.dumps(rec))
            if self.step % c.ckpt_every == 0:
                self.save(ck)
            if (time.time() - t0) / 60 + self.elapsed_min > c.max_minutes:
                log.info("%s: time budget reached at step %d", c.name, self.step)
                break
        self.elapsed_min += (time.time() - t0) / 60
        self.save(ck)

    def save(self, path: Path) -> None:
        torch.save({
            "encoder": self.model.state_dict(), "matcher": self.matcher.state_dict(),
            "encoder_args": self.model.args.to_dict(), "table_emb": self.table_emb.cpu(),
            "table_logp": self.table_logp.cpu(), "opt": self.opt.state_dict(), "step": self.step,
            "config": asdict(self.cfg), "history": self.history, "elapsed_min": self.elapsed_min, "rng": self.rng.bit_generator.state,
        }, path)

    def load(self, path: Path) -> None:
        ck = torch.load(str(path), map_location=self.device, weights_only=False)
        self.model.load_state_dict(ck["encoder"])
        self.matcher.load_state_dict(ck["matcher"])
        self.table_emb = ck["table_emb"].to(self.device)
        self.table_logp = ck["table_logp"].to(self.device)
        self.opt.load_state_dict(ck["opt"])
        self.step, self.history = ck["step"], ck["history"]
        self.elapsed_min = ck.get("elapsed_min", 0.0)
        self.rng.bit_generator.state = ck["rng"]
