#!/usr/bin/env bash
# Issue #6, 8k prefill with llm/kernels/cute_prefill.py (FlashAttention-4 + quack's SwiGLU-epilogue GEMM) on
# one H100/H200. The wheels travel in pieces (scripts/gpu/fa4_wheels.sh, then three calls of
# `STAGE=collect bash scripts/gpu/fa4_install.sh` carrying .fa4/p0, p1, p2), and in the last call, carrying
# .fa4/p3 (the machine must stay warm between the calls: /tmp is kept):
#   STEPS="install tests forward" bash scripts/gpu/cute_prefill.sh   # ~3 min: CUDA tests + forward variants
#   STEPS="bench" bash scripts/gpu/cute_prefill.sh                   # ~5 min: bench/llm_engine.py, TTFT vs transformers
# Results under $OUT/cute_prefill/.
set -uo pipefail
STEPS=${STEPS:-"install tests forward bench"}
OUT_DIR="${OUT:-/tmp/out}/cute_prefill"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
LOG="$OUT_DIR/log.txt"
quiet() { grep -v "UserWarning: Argument aux_data\|exe_args, func_types\|Loading weights\|Writing model"; }
for step in $STEPS; do
  echo "== $step $(date -u +%T)" | tee -a "$LOG"
  case $step in
    install) STAGE=install bash scripts/gpu/fa4_install.sh 2>&1 | tail -2 | tee -a "$LOG" ;;
    tests) timeout 300 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/llm/test_cute_prefill.py \
             2>&1 | tail -15 | tee -a "$LOG" ;;
    forward) OUT="$OUT_DIR" timeout 400 python3 scripts/gpu/prefill_cute.py 2>&1 | quiet | tail -14 | tee -a "$LOG" ;;
    bench) timeout 560 python3 bench/llm_engine.py --device cuda --models random-1b --batches 1 \
             --prompt-lens 1024,8192 --gen 64 --reps 5 --compile-prefill --cute-prefill --prefill-graph-timeout 400 \
             --out "$OUT_DIR/llm_engine.json" --workdir /tmp/llm_bench_models 2>&1 | quiet | tail -20 | tee -a "$LOG" ;;
  esac
done
