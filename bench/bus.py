"""Bus benchmark (same code as `wakeline bus bench`): events/s and p50/p99 enqueue-to-handled latency.

    python bench/bus.py --events 50000 --consumers 1,4 --rate 1000 --out runs/bus/bench.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

from services.bus.bench import main  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="Redis URL; default: an embedded redis-server on a unix socket")
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--consumers", default="1,4")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--paced-events", type=int, default=5000)
    ap.add_argument("--out", default="runs/bus/bench.json")
    a = ap.parse_args()
    main(a.url, a.events, [int(c) for c in a.consumers.split(",")], a.rate, a.paced_events, a.out)
