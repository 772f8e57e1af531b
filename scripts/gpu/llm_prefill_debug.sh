#!/usr/bin/env bash
# Issue #6 on one GPU: the CUDA engine tests with CUDA_LAUNCH_BLOCKING=1 (prefill graphs vs eager vs
# transformers, capture while slot 0 decodes, replays after allocator reuse), then TTFT of the eager
# path vs prefill graphs (vs eager again) on a random Llama-3.2-1B-shaped checkpoint at 1024 and
# 8192 tokens, 9 reps each, with the host/total split of the eager forward (launch-bound or not).
# No extra wheels. About 60-90 s on one H100 (hard limits: tests 60 s, a rerun only after a
# failure 45 s, TTFT 90 s).
#   bash scripts/gpu/llm_prefill_debug.sh                      # writes $OUT/llm_prefill_debug/
#   SMOKE=1 OUT=/tmp/o bash scripts/gpu/llm_prefill_debug.sh   # tiny shapes on CPU, to test the script
set -uo pipefail
NAME=llm_prefill_debug
OUT_DIR="${OUT:-/tmp/out}/$NAME"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
LOG="$OUT_DIR/log.txt"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,pstate,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu \
    --format=csv 2>/dev/null || echo "no nvidia-smi"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $(nproc); load $(cut -d' ' -f1-3 /proc/loadavg)"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
  git rev-parse --short HEAD 2>/dev/null || true
} 2>&1 | tee "$LOG" "$OUT_DIR/env.txt"

if [ "${SMOKE:-0}" = "1" ]; then
  TTFT_ARGS=(--smoke --device cpu --models random-dense --batches 1 --prompt-lens 64,256 --reps 2 --threads 1)
else
  TTFT_ARGS=(--device cuda --models random-1b --batches 8 --prompt-lens 1024,8192 --reps 9)
fi

echo "== CUDA tests (CUDA_LAUNCH_BLOCKING=1)" | tee -a "$LOG"
CUDA_LAUNCH_BLOCKING=1 timeout 60 python3 -m pytest -q -p no:cacheprovider -o addopts="" -rfE --tb=short \
  tests/llm/test_engine_gpu.py > "$OUT_DIR/tests.txt" 2>&1
trc=$?
if [ "${SMOKE:-0}" = "1" ] && [ "$trc" = 5 ]; then trc=0; fi  # no CUDA here: the module skips itself
tail -n 60 "$OUT_DIR/tests.txt" | tee -a "$LOG"
echo "tests rc=$trc" | tee -a "$LOG"
if [ "$trc" != 0 ]; then
  # a fresh process without launch blocking: tells a real failure from one of the blocking mode
  # (or from a device-side assert of an earlier test poisoning the rest of the process)
  echo "== CUDA tests again, no CUDA_LAUNCH_BLOCKING, long tracebacks" | tee -a "$LOG"
  timeout 45 python3 -m pytest -q -p no:cacheprovider -o addopts="" -rfE --tb=long \
    tests/llm/test_engine_gpu.py > "$OUT_DIR/tests_nonblocking.txt" 2>&1
  echo "rc=$?" | tee -a "$OUT_DIR/tests_nonblocking.txt" "$LOG"
  tail -n 40 "$OUT_DIR/tests_nonblocking.txt" | tee -a "$LOG"
fi

echo "== TTFT eager vs prefill graphs" | tee -a "$LOG"
timeout 90 python3 bench/llm_prefill.py "${TTFT_ARGS[@]}" --out "$OUT_DIR/ttft.json" \
  --workdir /tmp/llm_bench_models 2>&1 | grep -v "Loading weights\|Writing model" | tee -a "$LOG"
brc=${PIPESTATUS[0]}
echo "ttft rc=$brc" | tee -a "$LOG"
date -u | tee -a "$LOG"
[ "$trc" = 0 ] && [ "$brc" = 0 ]
