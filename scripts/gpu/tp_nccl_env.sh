#!/usr/bin/env bash
# Issue #7: the all-reduce without P2P (NCCL_P2P_DISABLE=1, the PCIe-like path) is ~90% NCCL's all-gather of
# the quantized payload, which reaches less bus bandwidth than NCCL's own bf16 all-reduce. Does an NCCL
# setting change that, for either side? bench/tp_comm.py in CUDA graphs from 32 MB once per environment in
# VARIANTS (";"-separated, "-" = none). nvidia-h200-x2, ~3 min. Results: $OUT/tp_nccl_env/
#   VARIANTS="-;NCCL_MIN_NCHANNELS=16" bash scripts/gpu/tp_nccl_env.sh
set -uo pipefail
D=${OUT:-$PWD/runs}/tp_nccl_env
mkdir -p "$D"
export PYTHONPATH=$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1 OMP_NUM_THREADS=4 NCCL_P2P_DISABLE=1
BUDGET=${BUDGET:-300}
MIN_LEFT=25
VARIANTS=${VARIANTS:-"-;NCCL_MIN_NCHANNELS=16;NCCL_MIN_NCHANNELS=32;NCCL_PROTO=Simple;NCCL_BUFFSIZE=16777216;NCCL_SHM_USE_CUDA_MEMCPY=1"}
# shellcheck source=scripts/gpu/steps.sh
source scripts/gpu/steps.sh

main() {
  date -u; nvidia-smi --query-gpu=name --format=csv,noheader
  local i=0
  IFS=';' read -ra vs <<< "$VARIANTS"
  for v in "${vs[@]}"; do
    i=$((i + 1))
    local envs=()
    [ "$v" != "-" ] && read -ra envs <<< "$v"
    echo "== variant $i: $v"
    step "v$i" 50 env "${envs[@]}" torchrun --standalone --nproc-per-node 2 bench/tp_comm.py --device cuda \
      --tag "nop2p $v" --graph 8 --min-mb 32 --iters 10 --out "$D/v$i.json"
  done
  echo "== done t=${SECONDS}s"
}

main 2>&1 | tee "$D/log.txt"
