#!/usr/bin/env bash
# Quantized all-reduce kernels on ONE GPU (nvidia-h100-x1, ~1.5 min: 89 s on 2026-11-22): the CUDA kernel and CUDA-graph tests, then
# bench/tp_kernels.py (quantize+pack, quantize with error feedback, dequant+sum of 2 messages; 8 KB-128 MB;
# GPU time from CUDA graphs, eager time per call, GB/s against a measured torch copy; tile/warps sweep).
# Usage (repo root): bash scripts/gpu/tp_kernels.sh     Results: $OUT/tp_kernels/{kernels.json,log.txt,...}
# Carried wheels (tests only): .whl/pytest-*.whl .whl/pluggy-*.whl .whl/iniconfig-*.whl .whl/pygments-*.whl
# CPU smoke test: SMOKE=1 OUT=/tmp/o bash scripts/gpu/tp_kernels.sh   (Triton interpreter, tiny sizes)
set -uo pipefail
NAME=tp_kernels
OUT_ROOT=${OUT:-$PWD/runs}
D=$OUT_ROOT/$NAME
mkdir -p "$D"
export PYTHONPATH=$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}
BUDGET=${BUDGET:-420}

MIN_LEFT=20
# shellcheck source=scripts/gpu/steps.sh
source scripts/gpu/steps.sh

main() {
  date -u; hostname
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv 2>/dev/null
  install_test_wheels
  if [ "${SMOKE:-0}" = "1" ]; then
    export TRITON_INTERPRET=1
    step bench 300 python3 bench/tp_kernels.py --device cpu --out "$D/kernels.json"
  else
    step kernel_tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/llm/test_kernels_quant.py \
      tests/llm/test_quant_comm_graph.py
    step bench 240 python3 bench/tp_kernels.py --device cuda --out "$D/kernels.json"
  fi
  echo "== done t=${SECONDS}s"; ls -la "$D"
}

main 2>&1 | tee "$D/log.txt"
