#!/usr/bin/env bash
# Measure a KWS model directory through the evaluation contract (shared/specs/kws-eval.md) on CPU:
#   bash scripts/gpu/kws/eval_local.sh MODEL_DIR DATASET_DIR OUT_DIR
# DATASET_DIR holds pairs.jsonl and/or streams.jsonl (`wakeline kws data build --preset dev`,
# `wakeline kws data real`). Detection runs with a low threshold so `kws eval` can sweep it.
set -eo pipefail
MODEL=$1; DATA=$2; OUT=$3
mkdir -p "$OUT"
ARGS=()
if [ -f "$DATA/pairs.jsonl" ]; then
  wakeline kws score "$DATA/pairs.jsonl" --out "$OUT/scores.jsonl" --model "$MODEL" --no-progress
  ARGS+=(--pairs "$DATA/pairs.jsonl" --scores "$OUT/scores.jsonl")
fi
if [ -f "$DATA/streams.jsonl" ]; then
  wakeline kws detect "$DATA/streams.jsonl" --out "$OUT/detections.jsonl" --model "$MODEL" \
    --threshold "${DETECT_THRESHOLD:-0.05}" --no-progress
  ARGS+=(--streams "$DATA/streams.jsonl" --detections "$OUT/detections.jsonl")
fi
wakeline kws eval "${ARGS[@]}" --out "$OUT/results.json" --threshold "${THRESHOLD:-0.5}"
