#!/usr/bin/env bash
# Install FlashAttention-4 (CuTe DSL; Hopper and Blackwell kernels) on the GPU machine from wheels carried in
# pieces: the wheels (~100 MB, mostly nvidia-cutlass-dsl-libs-cu13) exceed one call's carry, so
# `scripts/gpu/fa4_wheels.sh` cuts their tar into .fa4/p0..p3, each call carries one piece and this
# script, run with STAGE=collect in the first calls, copies it to /tmp/fa4; STAGE=install (the last call)
# joins the pieces and installs the wheels without dependencies (torch, cuda-bindings, einops are there).
set -euo pipefail
STAGE=${STAGE:-install}
mkdir -p /tmp/fa4
for d in .fa4/p*; do
  [ -d "$d" ] && cp "$d"/part* /tmp/fa4/ 2>/dev/null || true
done
ls -la /tmp/fa4
if [ "$STAGE" = install ]; then
  cd /tmp/fa4
  cat part* > wheels.tar
  mkdir -p whl && tar xf wheels.tar -C whl
  python3 -m pip install --no-deps --no-index -q whl/*.whl
  python3 -c "import flash_attn.cute, cutlass; print('fa4 ok', cutlass.__file__)"
fi
