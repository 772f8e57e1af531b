"""Markdown tables for the model card from the trainer's *_metrics.json files.

    python -m llm.train.report runs/train_llm
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def tables(run_dir: str | Path) -> str:
    """Summary, retrieval-by-length and sample-answer tables for every *_metrics.json in `run_dir`."""
    ms = [json.loads(p.read_text()) for p in sorted(Path(run_dir).glob("*_metrics.json"))]
    ms = [m for m in ms if "val_ppl" in m]
    if not ms:
        return f"no evaluated metrics in {run_dir}\n"
    lines = ["| model | params | train steps | train tokens | train time | device | val ppl (1k ctx) "
             "| keyword-event exact match |", "|---|---|---|---|---|---|---|---|"]
    for m in ms:
        lines.append(f"| {m['kind']} | {m['params'] / 1e6:.2f}M | {m['steps']} | {m['train_tokens'] / 1e6:.1f}M "
                     f"| {m['train_seconds']:.0f} s | {m.get('device_name', '?')} | {m['val_ppl']:.2f} "
                     f"| {m['instruct_acc']:.0%} |")
    lengths = list(ms[0]["retrieval_acc"])
    lines += ["", "| retrieval exact match | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
              "|---|" + "---|" * len(lengths)]
    for m in ms:
        lines.append(f"| {m['kind']} | " + " | ".join(f"{m['retrieval_acc'][n]:.0%}" for n in lengths) + " |")
    lines += ["", "| prompt | " + " | ".join(m["kind"] for m in ms) + " |", "|---|" + "---|" * len(ms)]
    for i, s in enumerate(ms[0]["samples"]):
        cells = [m["samples"][i]["answer"].replace("|", "\\|").replace("\n", " ") for m in ms]
        lines.append(f"| {s['prompt']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(tables(sys.argv[1] if len(sys.argv) > 1 else "runs/train_llm"))
