#!/usr/bin/env bash
# Issue #6 on one H100: (a) the CUDA engine tests (tests/llm/test_engine*.py, test_cuda_graphs*.py,
# marker gpu): graph decode == eager == transformers, multi-step == one-step, and now seeded sampling
# inside the graphs (K=8 == K=1 == the eager host sampler in fp32; bf16 + torch.compile K=8 == K=1;
# compiled sampler == eager sampler); (b) bench/llm_engine.py on the random Llama-3.2-1B shape,
# decode b1/b8 with compile="tuned" and decode_steps=64, greedy and sampled (temperature 0.8,
# top_k 50, top_p 0.95) vs transformers, one 1k TTFT row, no prefill graphs: re-checks that the
# engine option compile="tuned" reproduces the 750 tok/s (62% of the bound) of bench/llm_profile.py.
# Carried wheels (pytest only): .whl/pytest-9.0.3 pluggy-1.6.0 iniconfig-2.3.0 pygments-2.20.0
# packaging-26.2. About 5.5 min on one H100 (budget 330 s: tests <= 100 s, bench the rest).
#   bash scripts/gpu/llm_decode_verify.sh                     # writes $OUT/llm_decode_verify/
#   QUICK=1 bash scripts/gpu/llm_decode_verify.sh             # ~4 min: sampling tests only, no transformers
#   SMOKE=1 OUT=/tmp/o bash scripts/gpu/llm_decode_verify.sh  # tiny shapes on CPU, to test the script
set -uo pipefail
NAME=llm_decode_verify
OUT_DIR="${OUT:-/tmp/out}/$NAME"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
QUICK=${QUICK:-0}
BUDGET=${BUDGET:-$([ "$QUICK" = 1 ] && echo 240 || echo 330)}
TEST_SEL=()
EXTRA=()
if [ "$QUICK" = 1 ]; then TEST_SEL=(-k sampling); EXTRA=(--no-hf --reps 1); fi
# shellcheck source=scripts/gpu/steps.sh
source scripts/gpu/steps.sh
install_test_wheels

if [ "${SMOKE:-0}" = "1" ]; then
  BENCH_ARGS=(--smoke --device cpu --models random-1b --batches 1,2 --prompt-lens 64 --gen 16 --reps 1 --threads 1
              --compile random-1b --compile-tuned --decode-steps 4 --sampled --no-prefill-graphs)
  TEST_LIMIT=60
else
  BENCH_ARGS=(--device cuda --models random-1b --batches 1,8 --prompt-lens 1024 --gen 128 --reps 3
              --compile random-1b --compile-tuned --decode-steps 64 --sampled --no-prefill-graphs)
  TEST_LIMIT=100
fi

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv 2>/dev/null \
    || echo "no nvidia-smi"
  echo "cpu: $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
  git rev-parse --short HEAD 2>/dev/null || true

  step tests "$TEST_LIMIT" python3 -m pytest -v -p no:cacheprovider -o addopts="" -rfE --tb=short -m gpu "${TEST_SEL[@]}" \
    --durations=8 tests/llm/test_engine*.py tests/llm/test_cuda_graphs*.py > "$OUT_DIR/tests.txt" 2>&1
  grep -E "^== |PASSED|FAILED|ERROR|SKIPPED|passed|failed|error|skipped|no tests ran" "$OUT_DIR/tests.txt" | tail -n 40

  step bench "$((BUDGET - SECONDS - 5))" python3 bench/llm_engine.py "${BENCH_ARGS[@]}" "${EXTRA[@]}" \
    --out "$OUT_DIR/llm_engine.json" --workdir /tmp/llm_bench_models 2>&1 | grep -v "Loading weights\|Writing model"
  date -u
} 2>&1 | tee "$OUT_DIR/log.txt"
