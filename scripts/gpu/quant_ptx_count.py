"""Static instruction count of the quantize+pack kernel (issue #7), compiled for sm90 without a GPU
(Triton's own ptxas on this machine). Compiles the p2p launch at 32 MB: bf16 [4096, 4096], group 128,
64 outliers, whole rows of 32 groups per program, 4 warps. Three variants: with and without error
feedback, and with and without the peer push. Prints the PTX instructions per thread and per value and
the most common opcodes, and writes /tmp/q_ew*_p*.ptx.

    TRITON_DEFAULT_FP_FUSION=1 python scripts/gpu/quant_ptx_count.py
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import llm.kernels.quantize_pack as qp

SIG = {"x_ptr": "*bf16", "e_ptr": "*bf16", "keep_ptr": "*i32", "idx_ptr": "*i32", "buf_ptr": "*u8", "peer_ptr": "*i64",
       "N": "i32", "PB": "i32", "H2": "i32", "NG": "i32", "K": "i32", "stride_x": "i32", "stride_xw": "i32",
       "stride_e": "i32", "stride_ew": "i32", "OFF_S": "i32", "OFF_O": "i32", "INV_Q": "fp32"}
CONST = dict(GROUP=128, BLOCK_R=1, BLOCK_G=32, BLOCK_K=64, PAIRED=True, EVEN=True, ERR_IN=True, ERR_OUT=True,
             HAS_OUTL=True, EXACT_DIV=False, INTERP=False, N_PEERS=1)
# the launcher's specialization: pointers and these integers are multiples of 16 at this shape
DIV16 = ("x_ptr", "e_ptr", "keep_ptr", "idx_ptr", "buf_ptr", "peer_ptr", "PB", "H2", "stride_x", "stride_xw",
         "stride_e", "stride_ew", "OFF_S", "OFF_O")
INSTR = re.compile(r"^\s+(@%p\d+\s+)?([a-z][\w.]*)")


def count(err: bool, peers: int) -> None:
    names = list(SIG) + list(CONST)
    sig = {**SIG, **{k: "constexpr" for k in CONST}}
    const = {**CONST, "ERR_IN": err, "ERR_OUT": err, "N_PEERS": peers}
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in DIV16}
    src = ASTSource(fn=qp._quantize_pack_kernel, signature=sig,
                    constexprs={(names.index(k),): v for k, v in const.items()}, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    ptx = kernel.asm["ptx"]
    ops = [m.group(2).split(".")[0] for m in map(INSTR.match, ptx.splitlines()) if m]
    per_thread = const["BLOCK_R"] * const["BLOCK_G"] * const["GROUP"] / (32 * 4)  # values per thread
    print(f"error feedback {err}, peers {peers}: {len(ops)} PTX instructions per thread, "
          f"{len(ops) / per_thread:.1f} per value")
    print("   ", collections.Counter(ops).most_common(16))
    Path(f"/tmp/q_ew{int(err)}_p{peers}.ptx").write_text(ptx)


if __name__ == "__main__":
    for err, peers in ((False, 0), (True, 0), (True, 1)):
        count(err, peers)
