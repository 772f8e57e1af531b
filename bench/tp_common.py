"""What the tensor-parallel benchmarks (tp_comm.py, tp_e2e.py) share: their command line and how a
timing becomes one number (the median over repetitions, the slowest rank's)."""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch
import torch.distributed as dist


def tp_parser(doc: str, png: str) -> argparse.ArgumentParser:
    """The flags every TP benchmark takes: --plot/--png (plot saved JSON), --out, --tag, --device."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plot", nargs="+", help="JSON files to plot into --png (no benchmark is run)")
    ap.add_argument("--png", default=png)
    ap.add_argument("--out")
    ap.add_argument("--tag", default="nvlink")
    ap.add_argument("--device", default=None)
    return ap


def median_max_over_ranks(seconds: list[float], dev: torch.device) -> float:
    """This rank's median of `seconds`, then the maximum over ranks (a collective: every rank calls it)."""
    med = torch.tensor([statistics.median(seconds)], dtype=torch.float64, device=dev)
    dist.all_reduce(med, op=dist.ReduceOp.MAX)
    return med.item()


def write_json(path: str, res: dict) -> None:
    """Write the result (rank 0 calls this), creating the directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
