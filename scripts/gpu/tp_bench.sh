#!/usr/bin/env bash
# Tensor-parallel GPU run (nvidia-h200-x2, ~5 min, <= 7): Triton kernel tests and single-GPU kernel
# bandwidth (bench/tp_kernels.py) on CUDA, all-reduce latency
# vs size (NCCL bf16 vs quantized) over NVLink and with NCCL_P2P_DISABLE=1, end-to-end prefill/decode
# of a Llama-3-8B-shaped model at TP=2, and the quality eval on the default model if it exists.
# Usage (repo root): bash scripts/gpu/tp_bench.sh     Results: $OUT/tp_bench/*.json, log.txt
# CPU smoke test:    SMOKE=1 OUT=/tmp/o bash scripts/gpu/tp_bench.sh
set -uo pipefail
NAME=tp_bench
OUT_ROOT=${OUT:-$PWD/runs}
D=$OUT_ROOT/$NAME
mkdir -p "$D"
export PYTHONPATH=$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1 OMP_NUM_THREADS=4
BUDGET=${BUDGET:-400}
DEV=cuda
NPROC=${NPROC:-2}  # TP degree (issue #9: 4 or 8 on nvidia-h200-x4 / -x8)
E2E_ARGS=${E2E_ARGS:-}  # e.g. "--shape 70b" at TP=4/8
COMM_ARGS=${COMM_ARGS:-}  # e.g. "--graph 8": also time each path captured in CUDA graphs
if [ "${SMOKE:-0}" = "1" ]; then DEV=cpu; fi

# STEPS="kernel_tests comm_nvlink" runs only those steps

MIN_LEFT=30
# shellcheck source=scripts/gpu/steps.sh
source scripts/gpu/steps.sh

main() {
  date -u; hostname
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())"
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null; nvidia-smi topo -m 2>/dev/null
  install_test_wheels
  local run="torchrun --standalone --nproc-per-node $NPROC"
  if [ "$DEV" = cuda ]; then
    step kernel_tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/llm/test_kernels_quant.py tests/llm/test_p2p.py \
      tests/llm/test_quant_comm_graph.py
    step kernels 100 python3 bench/tp_kernels.py --device cuda --no-sweep --out "$D/kernels.json"
  fi
  step comm_nvlink 110 $run bench/tp_comm.py --device $DEV --tag nvlink $COMM_ARGS --out "$D/comm_nvlink.json"
  step e2e_nvlink 170 $run bench/tp_e2e.py --device $DEV --tag nvlink $E2E_ARGS --out "$D/e2e_nvlink.json"
  NCCL_P2P_DISABLE=1 step comm_nop2p 110 $run bench/tp_comm.py --device $DEV --tag nop2p $COMM_ARGS \
    --out "$D/comm_nop2p.json"
  for m in dense moe; do
    if [ -f models/llm/$m/config.json ]; then
      step quality_$m 90 $run -m llm.parallel.quality --model models/llm/$m --device $DEV \
        --text .llmdata/val.txt.xz --out "$D/quality_${m}_tp2.json"
    else
      echo "== no models/llm/$m: quality eval skipped"
    fi
  done
  NCCL_P2P_DISABLE=1 step e2e_nop2p 120 $run bench/tp_e2e.py --device $DEV --tag nop2p --prompts 8192 $E2E_ARGS \
    --out "$D/e2e_nop2p.json"
  # more NCCL channels for both paths (the 2-rank all-gather does not fill NVLink by default)
  NCCL_MIN_NCHANNELS=32 step comm_nvlink_ch32 90 $run bench/tp_comm.py --device $DEV --tag nvlink_ch32 \
    --iters 10 --out "$D/comm_nvlink_ch32.json"
  echo "== done t=${SECONDS}s"; ls -la "$D"
}

main 2>&1 | tee "$D/log.txt"
