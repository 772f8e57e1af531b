#!/usr/bin/env bash
# Issue #7: which kernel tiles make the quantized all-reduce fastest on this machine (nvidia-h200-x2,
# ~4 min)? The CUDA kernel tests, the one-GPU tile sweep of bench/tp_kernels.py, then the all-reduce over
# NVLink in CUDA graphs from 16 MB with the library defaults and with each "quantize/dequant" tile pair
# in TILES ("block_r,block_g,warps/block_r,block_g,warps"; default: the sweep's best pair and a few fixed).
#   TILES="1,16,2/1,32,4 1,8,2/1,32,4" bash scripts/gpu/tp_tiles.sh          Results: $OUT/tp_tiles/
set -uo pipefail
D=${OUT:-$PWD/runs}/tp_tiles
mkdir -p "$D"
export PYTHONPATH=$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1 OMP_NUM_THREADS=4
BUDGET=${BUDGET:-420}
MIN_LEFT=25
# shellcheck source=scripts/gpu/steps.sh
source scripts/gpu/steps.sh

main() {
  date -u; nvidia-smi --query-gpu=name --format=csv,noheader
  install_test_wheels
  step kernel_tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/llm/test_kernels_quant.py \
    tests/llm/test_p2p.py tests/llm/test_quant_comm_graph.py
  CUDA_VISIBLE_DEVICES=0 step sweep 150 python3 bench/tp_kernels.py --device cuda --out "$D/kernels.json"
  local tiles=${TILES:-}
  if [ -z "$tiles" ]; then
    tiles=$(python3 -c "import json; c = json.load(open('$D/kernels.json')).get('config', {})
print('/'.join(','.join(str(v or 0) for v in c[k]) for k in ('quantize_ef', 'dequant_sum')) if c else '')" \
      2>/dev/null)
    tiles="$tiles 1,16,2/0,0,0 1,8,2/0,0,0"
  fi
  local run="torchrun --standalone --nproc-per-node 2"
  step comm_default 60 $run bench/tp_comm.py --device cuda --tag default --graph 8 --min-mb 16 \
    --out "$D/comm_default.json"
  for t in $tiles; do
    step "comm_$t" 60 $run bench/tp_comm.py --device cuda --tag "tiles_$t" --graph 8 --min-mb 16 \
      --tile "${t%/*}" --dq-tile "${t#*/}" --out "$D/comm_$(echo "$t" | tr ',/' '_-').json"
  done
  echo "== done t=${SECONDS}s"
}

main 2>&1 | tee "$D/log.txt"
