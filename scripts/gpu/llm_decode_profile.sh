#!/usr/bin/env bash
# Issue #6 on one GPU: (1) the CUDA engine tests (graph decode == eager == transformers, prefill
# graphs, multi-step decode == one-step); (2) bench/llm_profile.py on a random Llama-3.2-1B-shaped
# checkpoint: per-weight GEMV bandwidth at batch 1, graph-only step time vs engine time per token
# (decode_steps 1/64), torch.profiler key_averages tables of the decode graph replay (eager graphs
# and compiled variants: base, multiply+sum decode attention, + coordinate-descent tuning), one
# eager decode step and the 8k prefill (ours eager / compiled vs transformers), SDPA backends, MFU;
# (3) bench/llm_engine.py QUICK-style on the 1B (TTFT 1k/8k incl. compiled prefill graphs, decode
# b1/b8 one-step vs multi-step, with and without torch.compile, vs transformers). No extra wheels.
# About 6.5 min on one H100 (hard limits: tests 90 s, profile 180 s, bench 210 s).
#   bash scripts/gpu/llm_decode_profile.sh                     # writes $OUT/llm_decode_profile/
#   SMOKE=1 OUT=/tmp/o bash scripts/gpu/llm_decode_profile.sh  # tiny shapes on CPU, to test the script
set -uo pipefail
NAME=llm_decode_profile
OUT_DIR="${OUT:-/tmp/out}/$NAME"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
LOG="$OUT_DIR/log.txt"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv 2>/dev/null \
    || echo "no nvidia-smi"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $(nproc); load $(cut -d' ' -f1-3 /proc/loadavg)"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
  git rev-parse --short HEAD 2>/dev/null || true
} 2>&1 | tee "$LOG"

if [ "${SMOKE:-0}" = "1" ]; then
  PROF_ARGS=(--smoke --device cpu --prompt-len 256 --gen 16 --steps 5 --reps 2 --decode-steps 4,16
             --compile-variants sum)
  BENCH_ARGS=(--smoke --device cpu --models random-dense --batches 1,2 --prompt-lens 64,256 --gen 16 --reps 1
              --threads 1 --decode-steps 4 --no-prefill-graphs)
else
  PROF_ARGS=(--device cuda --prompt-len 8192 --gen 128 --steps 200 --reps 5 --decode-steps 64
             --compile-variants base,sum,sum+cdt --compile-prefill)
  BENCH_ARGS=(--device cuda --models random-1b --batches 1,8 --prompt-lens 1024,8192 --gen 128 --reps 3
              --compile random-1b --decode-steps 64 --compile-prefill
              --prefill-graph-timeout 120)
fi

echo "== CUDA tests" | tee -a "$LOG"
timeout 90 python3 -m pytest -q -p no:cacheprovider -o addopts="" -rfE --tb=short \
  tests/llm/test_engine_gpu.py > "$OUT_DIR/tests.txt" 2>&1
trc=$?
if [ "${SMOKE:-0}" = "1" ] && [ "$trc" = 5 ]; then trc=0; fi  # no CUDA here: the module skips itself
tail -n 40 "$OUT_DIR/tests.txt" | tee -a "$LOG"
echo "tests rc=$trc" | tee -a "$LOG"

echo "== profile" | tee -a "$LOG"
timeout 180 python3 bench/llm_profile.py "${PROF_ARGS[@]}" --model random-1b --out-dir "$OUT_DIR" \
  --workdir /tmp/llm_bench_models 2>&1 | grep -v "Loading weights\|Writing model" > "$OUT_DIR/profile_log.txt"
prc=${PIPESTATUS[0]}
tail -n 25 "$OUT_DIR/profile_log.txt" | tee -a "$LOG"
echo "profile rc=$prc" | tee -a "$LOG"

echo "== bench" | tee -a "$LOG"
timeout 210 python3 bench/llm_engine.py "${BENCH_ARGS[@]}" --out "$OUT_DIR/llm_engine.json" \
  --workdir /tmp/llm_bench_models 2>&1 | grep -v "Loading weights\|Writing model" | tee -a "$LOG"
brc=${PIPESTATUS[0]}
echo "bench rc=$brc" | tee -a "$LOG"
date -u | tee -a "$LOG"
[ "$trc" = 0 ] && [ "$prc" = 0 ] && [ "$brc" = 0 ]
