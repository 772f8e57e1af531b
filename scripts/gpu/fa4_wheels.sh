#!/usr/bin/env bash
# Download the FlashAttention-4 wheels for the GPU machine's Python (3.12) and cut their tar into
# pieces that fit one `run` call's carry beside the tree: .fa4/p0 .. .fa4/pN (git-ignored via
# .git/info/exclude). Then carry one piece per call with `STAGE=collect bash scripts/gpu/fa4_install.sh`
# and the last with `STAGE=install`.
set -euo pipefail
tmp=$(mktemp -d)
python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
  -d "$tmp" flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
  nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2 \
  torch-c-dlpack-ext==0.1.5 quack-kernels==0.6.5
(cd "$tmp" && tar cf wheels.tar ./*.whl)
rm -rf .fa4 && mkdir -p .fa4
split -b 26m -d -a 1 "$tmp/wheels.tar" "$tmp/part"
for f in "$tmp"/part*; do n=${f##*part}; mkdir -p ".fa4/p$n"; mv "$f" ".fa4/p$n/"; done
grep -qx ".fa4/" .git/info/exclude 2>/dev/null || echo ".fa4/" >> .git/info/exclude
rm -rf "$tmp"
du -sh .fa4/p*
