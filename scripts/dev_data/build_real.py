"""Build the real-speech dev set (pocketsphinx-testdata + klettres-data) in the pairs/streams formats.

Usage: python scripts/dev_data/build_real.py --out data/kws/real   (same as `wakeline kws data real`)
"""

from __future__ import annotations

import argparse
import json

from kws.data.real import build_real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/kws/real", help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="picks the negatives")
    args = ap.parse_args()
    print(json.dumps(build_real(args.out, seed=args.seed), indent=2))


if __name__ == "__main__":
    main()
