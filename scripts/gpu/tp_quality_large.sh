#!/usr/bin/env bash
# Issue #7: does the quantized all-reduce's quality gap shrink on a larger model than the 6-layer, 256-wide
# default? Trains a 12-layer, 768-wide Llama-shaped dense model (~85M parameters) on the project corpus for
# TRAIN_SECONDS on GPU 0, then runs the TP=2 quality eval (llm.parallel.quality: perplexity ratio, top-1
# agreement, retrieval; every comm mode) on both GPUs. nvidia-h200-x2 with .llmdata carried, ~7 min.
# The checkpoint stays on the machine (too large to track). Results: $OUT/tp_quality_large/
set -uo pipefail
D=${OUT:-$PWD/runs}/tp_quality_large
mkdir -p "$D"
export PYTHONPATH=$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1 OMP_NUM_THREADS=4 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
BUDGET=${BUDGET:-480}
TRAIN_SECONDS=${TRAIN_SECONDS:-240}
SHAPE=${SHAPE:-'{"hidden": 768, "layers": 12, "ffn": 2048}'}
MIN_LEFT=25
# shellcheck source=scripts/gpu/steps.sh
source scripts/gpu/steps.sh

main() {
  date -u; nvidia-smi --query-gpu=name --format=csv,noheader
  CUDA_VISIBLE_DEVICES=0 step train $((TRAIN_SECONDS + 120)) python3 -m llm.train.trainer --kind dense --out "$D" \
    --shape "$SHAPE" --seconds "$TRAIN_SECONDS" --lr 1e-3 --curriculum '[[0, 512], [0.5, 1024]]' \
    --eval-lengths '[512]' --eval-samples 10 --val-tokens 65536
  grep -E "trained|val_ppl" "$D"/*.log 2>/dev/null
  step quality 150 torchrun --standalone --nproc-per-node 2 -m llm.parallel.quality --model "$D/dense" --device cuda \
    --text .llmdata/val.txt.xz --out "$D/quality_large_tp2.json"
  rm -rf "$D/dense"
  echo "== done t=${SECONDS}s"
}

main 2>&1 | tee "$D/log.txt"
