"""Quality of the quantized all-reduce: perplexity ratio, top-1 agreement, retrieval accuracy.

    python -m llm.parallel.quality --model models/llm/dense --tp 2 --text .llmdata/val.txt.xz --out q.json

Spawns `--tp` gloo ranks on CPU (or runs as one rank under torchrun). Calibration uses the first
30% of the text, evaluation starts at 50%. Every reduction takes the low-bit path (no size gate), so
the numbers are the worst case. Modes: exact TP (the reference), quantized one-shot and two-shot with
outliers, error feedback and the exact last site (the defaults), one-shot with the last site quantized
too (`one_shot_quantlast`) and also without error feedback (`one_shot_noef_quantlast`), naive all-int4
(same groups and scales, no outlier channels, no error feedback, every site quantized), and `bf16` (partials rounded to bf16, then
an exact sum: the floor that any bf16 communication has against fp32 TP). Top-1 agreement is also
reported on the positions where the reference is not close to a tie (top-1 probability ahead of the
second by >= 0.1): a tiny model has many near-ties, where any noise flips the argmax.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from llm.kernels import quantize_pack as qp

MODES = ("exact", "bf16", "one_shot", "one_shot_quantlast", "one_shot_noef_quantlast", "two_shot", "naive_int4")
MARGIN = 0.1


class _Bf16AllReduce:
    """Partials rounded to bf16, summed exactly: what bf16 communication alone costs."""

    def min_bytes(self, device) -> int:
        return 0

    def bits_per_value(self, hidden: int) -> float:
        return 16.0

    def __call__(self, x: torch.Tensor, site: str) -> torch.Tensor:
        import torch.distributed as dist

        y = x.to(torch.bfloat16).to(x.dtype)
        dist.all_reduce(y)
        return y


class _FakeQuant:
    """What-if schemes without a wire format: each rank fake-quantizes its partial the way
    `quantize_pack_ref` does (groups of 128, fp16 scale = absmax / 2^(b-1), codes clipped to +-(2^(b-1) - 1),
    the H/64 calibrated outliers rounded to bf16, error feedback across the sites of a forward pass),
    with b bits per site, then the dequantized partials are summed exactly. Mode
    `fake<b>[;<site>=<bits>...]`, e.g. `fake4;layers.5.mlp=8`; `fake4` is the default scheme with every
    site quantized (it matches `one_shot_quantlast` up to the summation order)."""

    GROUP = 128

    def __init__(self, spec: str, cal) -> None:
        head, *rest = spec.split(";")
        self.default = int(head.removeprefix("fake"))
        self.bits = {k: int(v) for k, v in (r.split("=") for r in rest)}
        self.cal = cal
        self.err: torch.Tensor | None = None
        self.order: dict[str, int] = {}
        self.last = -1

    def min_bytes(self, device) -> int:
        return 0

    def bits_per_value(self, hidden: int) -> float:
        k = max(1, hidden // 64)
        groups = -(-hidden // self.GROUP)
        per_site = [(self.bits.get(site, self.default) * hidden + 16 * groups + 16 * k) / hidden
                    for site in self.cal.ranges]
        return sum(per_site) / len(per_site)

    def __call__(self, x: torch.Tensor, site: str) -> torch.Tensor:
        import torch.distributed as dist

        pos = self.order.setdefault(site, len(self.order))
        if pos <= self.last or self.err is None or self.err.shape != x.shape:
            self.err = torch.zeros_like(x)  # a new forward pass: nothing to carry
        self.last = pos
        b, h = self.bits.get(site, self.default), x.shape[-1]
        idx = self.cal.outliers(site, max(1, h // 64)).long()
        xf = (x - self.err).reshape(-1, h).float()
        xi = xf.clone()
        xi[:, idx] = 0.0
        pad = (-h) % self.GROUP
        xg = F.pad(xi, (0, pad)).view(xf.shape[0], -1, self.GROUP)
        codes, sc = qp.round_groups(xg, bits=b, exact_div=False)
        y = (codes * sc.float().unsqueeze(-1)).view(xf.shape[0], -1)[:, :h]
        y[:, idx] = xf[:, idx].to(torch.bfloat16).float()
        y = y.view(x.shape).to(x.dtype)
        self.err = y - (x - self.err)
        dist.all_reduce(y)
        return y


def _quantizer(mode: str, cal):
    """exact | bf16 | one_shot | two_shot | naive_int4 (no outliers, no error feedback, every site
    quantized), optionally suffixed _g<group size>, _noef (no error feedback) and/or _quantlast (the last
    site quantized too, `QuantCommConfig.exact_last` off), in that order, e.g. one_shot_g64_noef."""
    from llm.parallel.quant_comm import QuantAllReduce, QuantCommConfig

    if mode == "exact":
        return None
    if mode == "bf16":
        return _Bf16AllReduce()
    if mode.startswith("fake"):
        return _FakeQuant(mode, cal)
    exact_last = not mode.endswith("_quantlast")
    mode = mode.removesuffix("_quantlast")
    ef = not mode.endswith("_noef")
    mode = mode.removesuffix("_noef")
    base, _, g = mode.partition("_g")
    group = int(g) if g.isdigit() else 128
    if base == "naive_int4":
        return QuantAllReduce(QuantCommConfig(outlier_div=0, min_bytes=0, group_size=group,
                                              error_feedback=False, exact_last=False), cal)
    return QuantAllReduce(QuantCommConfig(mode=base, min_bytes=0, group_size=group, error_feedback=ef,
                                          exact_last=exact_last), cal)


@torch.inference_mode()
def _forward(model, ids: torch.Tensor) -> torch.Tensor:
    B, S = ids.shape
    model.setup_caches(B, S)
    pos = torch.arange(S, device=ids.device).expand(B, S)
    return model(ids, pos, fresh=True).float()


def _retrieval(model, tok, filler: np.ndarray, n: int, length: int) -> list[bool] | None:
    try:
        from llm.train.synth import RetrievalTask
        task = RetrievalTask(tok.tok, filler)
    except Exception:  # tokenizer without the chat/digit tokens of the default models
        return None
    rng = np.random.default_rng(1234 + length)
    hits = []
    for _ in range(n):
        s = task.sample(rng, length, n_questions=1)
        x = torch.tensor([s.ids], device=model.device)
        pred = _forward(model, x).argmax(-1)[0].cpu()
        pos = torch.tensor(s.answer_pos)
        hits.append(bool((pred[pos - 1] == torch.tensor(s.ids)[pos]).all()))
    return hits


def quality_rank(rank: int, world: int, model_dir: str, text: str | None, n_seqs: int, ctx: int,
                 n_retrieval: int, device: str, modes: tuple[str, ...] = MODES) -> dict:
    """One rank of the evaluation; every rank returns the same numbers."""
    from llm.parallel import comm
    from llm.parallel.calibrate import load_tp_model, read_text_chunks, record_ranges
    from llm.parallel.quant_comm import Calibration

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, tok = load_tp_model(model_dir, device, dtype)
    dev = model.device
    cal_prompts = read_text_chunks(text, 32, chars=3000)
    cal = Calibration(record_ranges(model, tok, cal_prompts, max_tokens=1024), tp=world)
    eval_text = " ".join(read_text_chunks(text, 400, chars=2000, skip_frac=0.5))
    ids = np.array(tok.encode(eval_text), dtype=np.int64)
    n_seqs = min(n_seqs, len(ids) // ctx)
    seqs = torch.from_numpy(ids[: n_seqs * ctx].reshape(n_seqs, ctx)).to(dev)
    out: dict = {"model": model_dir, "tp": world, "device": device, "dtype": str(dtype),
                 "eval_tokens": int(n_seqs * (ctx - 1)), "ctx": ctx, "calib_prompts": len(cal_prompts)}
    ref_top1 = ref_sure = None
    ref_hits = None
    for mode in modes:
        q = _quantizer(mode, cal)
        comm.set_quantizer(q)
        nll, top1, sure = [], [], []
        for i in range(0, n_seqs, 4):
            x = seqs[i:i + 4]
            logits = _forward(model, x)
            nll.append(F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="none").cpu())
            top1.append(logits[:, :-1].argmax(-1).flatten().cpu())
            p2 = logits[:, :-1].softmax(-1).topk(2, dim=-1).values.flatten(0, 1).cpu()
            sure.append(p2[:, 0] - p2[:, 1] >= MARGIN)
        nll_t, top1_t = torch.cat(nll), torch.cat(top1)
        row = {"ppl": math.exp(nll_t.mean().item())}
        if q is not None:
            bits = getattr(q, "forward_bits_per_value", q.bits_per_value)
            row["bits_per_value"] = bits(model.args.dim)  # averaged over a forward pass's sites
        if ref_top1 is None:
            ref_top1, ref_sure = top1_t, torch.cat(sure)
            out["ref_not_near_tie_frac"] = ref_sure.float().mean().item()
        row["top1_agreement"] = (top1_t == ref_top1).float().mean().item()
        row["top1_agreement_not_near_tie"] = (top1_t == ref_top1)[ref_sure].float().mean().item()
        if n_retrieval:
            hits = _retrieval(model, tok, ids, n_retrieval, 1024)
            if hits is not None:
                ref_hits = hits if ref_hits is None else ref_hits
                row["retrieval_acc"] = sum(hits) / len(hits)
        out[mode] = row
    comm.set_quantizer(None)
    base = out["exact"]
    out["modes"] = list(modes)
    for mode in modes[1:]:
        out[mode]["ppl_ratio"] = out[mode]["ppl"] / base["ppl"]
        if "retrieval_acc" in out[mode] and base.get("retrieval_acc"):
            out[mode]["retrieval_retained"] = out[mode]["retrieval_acc"] / base["retrieval_acc"]
    return out


def print_table(res: dict) -> None:
    print(f"model {res['model']}  TP={res['tp']}  {res['eval_tokens']} eval tokens, {res['device']} {res['dtype']}")
    print(f"top1*: agreement where the reference's top-1 leads by >= {MARGIN} probability "
          f"({res.get('ref_not_near_tie_frac', float('nan')):.1%} of positions)")
    print(f"{'mode':24s} {'bits':>6s} {'ppl':>9s} {'ratio':>7s} {'top1':>7s} {'top1*':>7s} {'retr':>6s}")
    for m in res["modes"]:
        r = res[m]
        print(f"{m:24s} {r.get('bits_per_value', 16):6.3f} {r['ppl']:9.3f} {r.get('ppl_ratio', 1):7.4f} "
              f"{r['top1_agreement']:7.2%} {r.get('top1_agreement_not_near_tie', 1):7.2%} "
              f"{r.get('retrieval_acc', float('nan')):6.2%}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--text", default=".llmdata/val.txt.xz")
    ap.add_argument("--seqs", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--retrieval", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--modes", default=",".join(MODES), help="exact first, comma-separated; see _quantizer() "
                    "and _FakeQuant (per-site bits, e.g. 'fake4;layers.5.mlp=8')")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    text = a.text if a.text and os.path.exists(a.text) else None
    fn_args = (a.model, text, a.seqs, a.ctx, a.retrieval, a.device, tuple(a.modes.split(",")))
    if "WORLD_SIZE" in os.environ:  # under torchrun: this process is one rank
        from llm.parallel.state import destroy_tp, init_tp

        st = init_tp(device=a.device)
        res = quality_rank(st.rank, st.world_size, *fn_args)
        destroy_tp()
        if st.rank != 0:
            return 0
    else:
        from llm.parallel.launch import run_ranks

        res = run_ranks(quality_rank, a.tp, *fn_args, device=a.device, timeout_s=3000)[0]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print_table(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
