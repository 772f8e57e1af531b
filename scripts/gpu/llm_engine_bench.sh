#!/usr/bin/env bash
# LLM engine on one GPU: CUDA tests (graph decode == eager == transformers), then bench/llm_engine.py
# (TTFT 1k/8k, decode tok/s at batch 1/8/32, vs transformers.generate) on a random ~1B Llama-3.2-1B
# shaped checkpoint and the default models if present, then the 1B again with torch.compile'd
# decode graphs. Needs no extra wheels. About 5 minutes (at most 9: tests 120 s + bench 420 s).
#   bash scripts/gpu/llm_engine_bench.sh             # on the GPU machine, writes $OUT/llm_engine_bench/
#   QUICK=1 bash scripts/gpu/llm_engine_bench.sh     # shorter (~3 min): 1B + MoE default, batch 1 and 8
#   SMOKE=1 OUT=/tmp/o bash scripts/gpu/llm_engine_bench.sh   # tiny shapes, CPU, to test the script
set -uo pipefail
NAME=llm_engine_bench
OUT_DIR="${OUT:-/tmp/out}/$NAME"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
LOG="$OUT_DIR/log.txt"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
} 2>&1 | tee "$LOG"

if [ "${SMOKE:-0}" = "1" ]; then
  ARGS=(--smoke --device cpu --models random-dense random-moe --batches 1,4 --prompt-lens 64,256 --gen 16 --reps 1 --compile random-dense)
  TEST_TIMEOUT=120
elif [ "${QUICK:-0}" = "1" ]; then  # second, shorter run: the 1B and the MoE default, batch 1 and 8
  ARGS=(--device cuda --models random-1b models/llm/moe --batches 1,8
        --prompt-lens 1024,8192 --gen 128 --reps 3 --compile random-1b)
  TEST_TIMEOUT=120
else
  ARGS=(--device cuda --models random-1b models/llm/dense models/llm/moe --batches 1,8,32
        --prompt-lens 1024,8192 --gen 128 --reps 3 --compile random-1b)
  TEST_TIMEOUT=120
fi

echo "== CUDA tests" | tee -a "$LOG"
timeout "$TEST_TIMEOUT" python3 -m pytest -q -p no:cacheprovider tests/llm/test_engine_gpu.py \
  -o addopts="" 2>&1 | tail -n 30 | tee -a "$LOG" "$OUT_DIR/tests.txt"

echo "== bench" | tee -a "$LOG"
timeout 420 python3 bench/llm_engine.py "${ARGS[@]}" --out "$OUT_DIR/llm_engine.json" \
  --workdir /tmp/llm_bench_models 2>&1 | grep -v "Loading weights\|Writing model" | tee -a "$LOG"
rc=${PIPESTATUS[0]}
date -u | tee -a "$LOG"
exit "$rc"
