#!/usr/bin/env bash
# Issue #7: what bounds the quantize+pack kernel? Nsight Compute on one GPU (H100/H200), one launch each of
# the kernel with and without error feedback (bf16 error buffer) on a 32 MB message ([4096, 4096] bf16, 64
# calibrated outliers), and of dequant+sum of two such messages: speed of light, memory and compute
# workload, occupancy, warp stalls, instruction statistics. ~1-2 min. Text reports in $OUT/quant_ncu/.
#   bash scripts/gpu/quant_ncu.sh
set -uo pipefail
D=${OUT:-/tmp/out}/quant_ncu
mkdir -p "$D"
export PYTHONPATH="$PWD:$PWD/protos${PYTHONPATH:+:$PYTHONPATH}"
cat > /tmp/quant_ncu_driver.py <<'PY'
import torch
import llm.kernels.dequant_sum as ds
import llm.kernels.quantize_pack as qp

n, h, k = 4096, 4096, 64
g = torch.Generator(device="cuda").manual_seed(0)
x = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, generator=g)
idx = torch.randperm(h, device="cuda", generator=g)[:k].sort().values.to(torch.int32)
keep = qp.keep_map(idx, h)
lay = qp.layout(n, h, 128, k)
out = torch.empty(2, lay.total, dtype=torch.uint8, device="cuda")
err = torch.zeros_like(x)
for _ in range(3):  # warm-up launches (compile), then the profiled ones
    qp.quantize_pack(x, idx, keep, 128, out=out[0])
    qp.quantize_pack(x, idx, keep, 128, out=out[1], err=err, err_in=True)
    ds.dequant_sum(out, lay, idx, keep, out_dtype=torch.bfloat16)
torch.cuda.synchronize()
print("driver done")
PY
SECTIONS="--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section Occupancy --section WarpStateStats --section InstructionStats --section LaunchStats"
timeout 300 ncu --clock-control none $SECTIONS --kernel-name regex:"_quantize_pack_kernel|_dequant_sum" --launch-skip 6 --launch-count 3 \
  python3 /tmp/quant_ncu_driver.py > "$D/ncu.txt" 2>&1
echo "rc=$?"
grep -E "_quantize_pack_kernel|_dequant_sum|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Executed Ipc|Issue Slots Busy|Theoretical Occupancy|Block Limit" "$D/ncu.txt" | head -60
