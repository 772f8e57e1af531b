"""Per-step time of the host sampler (`llm.sampling.sample`) against the graphs' formulation on the
host (`sample_reference`, the host path before issue #6's fast path), on the CPU.

For each vocabulary size, batch and mode (greedy, temperature, top-k 50, top-p 0.9, top-k + top-p,
top-k + top-p + repetition penalty 1.1 over a 256-token history), and each torch thread count: the
median of many calls after a warm-up (repeats stop at --reps or once a cell has run --budget
seconds, at least 5). Each call draws the next token index, as a decode step does. Logits are
N(0, 3^2) (at temperature 0.8 the top-p 0.9 nucleus holds ~30 tokens of 8k, ~1500 of 128k:
`nucleus` in the JSON; a bigger nucleus costs the host path more noise). Both paths' tokens are
compared on every cell's first call (`equal`).

    python bench/llm_sampling.py --vocabs 8192,131072 --batches 1,8,32 --threads 1,2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from llm.sampling import SamplingParams, sample, sample_reference, seed_key, warp

MODES = {
    "greedy": SamplingParams(),
    "temperature": SamplingParams(temperature=0.8),
    "top-k 50": SamplingParams(temperature=0.8, top_k=50),
    "top-p 0.9": SamplingParams(temperature=0.8, top_p=0.9),
    "top-k+top-p": SamplingParams(temperature=0.8, top_k=50, top_p=0.9),
    "+rep. penalty": SamplingParams(temperature=0.8, top_k=50, top_p=0.9, repetition_penalty=1.1),
}
IMPLS = {"reference": sample_reference, "host": sample}


def time_cell(fn, logits: torch.Tensor, p: SamplingParams, hist: list[list[int]], reps: int,
              budget: float) -> tuple[float, int, list[int]]:
    """(median ms per call, calls timed, the first call's tokens) of fn on this batch."""
    B = logits.shape[0]
    keys = [seed_key(1000 + i) for i in range(B)]
    t0 = time.perf_counter()
    first = fn(logits, [p] * B, hist, keys, [0] * B)
    warm = 1 if time.perf_counter() - t0 > 0.05 else 5
    for n in range(1, warm):
        fn(logits, [p] * B, hist, keys, [n] * B)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps and (len(times) < 5 or time.perf_counter() - start < budget):
        step = [warm + len(times)] * B
        t = time.perf_counter()
        fn(logits, [p] * B, hist, keys, step)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, len(times), first


def nucleus_size(logits: torch.Tensor, p: SamplingParams) -> float:
    """Mean number of tokens top-p (after top-k) keeps per row."""
    return statistics.mean(int(warp(row, p).isfinite().sum()) for row in logits[:4])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--vocabs", default="8192,131072", help="8192 = the default models' vocabulary")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per cell before repeats stop")
    ap.add_argument("--out", default="runs/bench/llm_sampling.json")
    a = ap.parse_args()
    cells = []
    g = torch.Generator().manual_seed(0)
    for V in (int(v) for v in a.vocabs.split(",")):
        for B in (int(b) for b in a.batches.split(",")):
            logits = torch.randn(B, V, generator=g) * 3
            hist = [torch.randint(0, V, (256,), generator=g).tolist() for _ in range(B)]
            for mode in a.modes.split(","):
                p = MODES[mode]
                cell = {"vocab": V, "batch": B, "mode": mode,
                        "nucleus": nucleus_size(logits, p) if p.truncates else None}
                for nt in (int(t) for t in a.threads.split(",")):
                    torch.set_num_threads(nt)
                    toks = {}
                    for name, fn in IMPLS.items():
                        ms, n, toks[name] = time_cell(fn, logits, p, hist, a.reps, a.budget)
                        cell[f"{name}_ms_t{nt}"], cell[f"{name}_n_t{nt}"] = round(ms, 4), n
                    cell["equal"] = cell.get("equal", True) and toks["host"] == toks["reference"]
                cells.append(cell)
                print(json.dumps(cell), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "capability": torch.backends.cpu.get_cpu_capability(), "args": vars(a)}
    out.write_text(json.dumps({"meta": meta, "cells": cells}, indent=1))
    threads = [int(t) for t in a.threads.split(",")]
    head = "| V | B | mode | " + " | ".join(f"reference {t}t ms | host {t}t ms | speedup {t}t" for t in threads)
    print("\n" + head + " | tokens equal |")
    print("|" + " --- |" * 3 + " ---: | ---: | ---: |" * len(threads) + " --- |")
    for c in cells:
        cols = []
        for t in threads:
            r, h = c[f"reference_ms_t{t}"], c[f"host_ms_t{t}"]
            cols += [f"{r:.3f}", f"{h:.3f}", f"{r / h:.1f}x"]
        print(f"| {c['vocab']} | {c['batch']} | {c['mode']} | " + " | ".join(cols) + f" | {c['equal']} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
