"""Low host-cost launches of the quantized all-reduce kernels.

`kernel[grid](...)` costs tens of microseconds of Python per call (argument binding, specialization
key, cache lookup) whatever the message size; for decode- and chunk-sized messages that is the whole
cost. `Launcher` pays it once per specialization: the first call goes through Triton's JIT and keeps
the compiled kernel it returns; later calls with the same key call the compiled kernel's launcher
directly (what the JIT does after its lookup, Triton >= 3.3: all arguments, constexprs included).

The key is the caller's: it must cover everything Triton specializes on (dtypes, the constexprs,
which integer arguments are 1 or multiples of 16, which pointers are 16-byte aligned). The launchers
in this package key on shapes, strides, dtypes, tile options and every tensor's address modulo 16, from
which all the scalar arguments follow: a superset.
Any failure of the direct path turns it off for the process and falls back to the JIT, as does
WAKELINE_TRITON_DIRECT=0. No host syncs and no allocations: launches are CUDA-graph capturable.
"""

from __future__ import annotations

import logging
import os

try:
    import triton
    from triton import knobs as _knobs
    from triton.runtime import driver as _driver
except ImportError:  # CPU-only installs, or a Triton without knobs: the JIT path only
    triton = None
    _knobs = None

log = logging.getLogger(__name__)

_direct = os.environ.get("WAKELINE_TRITON_DIRECT", "1") != "0" and os.environ.get("TRITON_INTERPRET") != "1"


class Launcher:
    """One @triton.jit kernel with its compiled specializations cached by a caller-built key."""

    def __init__(self, kernel, max_entries: int = 256) -> None:
        self.kernel = kernel
        self.max_entries = max_entries
        self._compiled: dict = {}

    def __call__(self, key, grid: tuple[int, int, int], args: tuple, num_warps: int) -> None:
        """Launch kernel[grid](*args, num_warps=num_warps); args are all parameters, in order."""
        global _direct
        ck = self._compiled.get(key) if _direct else None
        if ck is not None:
            try:
                # the stream the JIT would use: the current device's current stream (raw handle, cheap)
                stream = _driver.active.get_current_stream(_driver.active.get_current_device())
                enter, exit_ = _knobs.runtime.launch_enter_hook, _knobs.runtime.launch_exit_hook
                meta = ck.launch_metadata(grid, stream, *args) if enter is not None or exit_ is not None else None
                ck.run(grid[0], grid[1], grid[2], stream, ck.function, ck.packed_metadata, meta, enter, exit_,
                       *args)
                return
            except Exception as e:  # an API drift in Triton: stay correct, lose the speed
                _direct = False
                log.warning("direct Triton launch failed (%s: %s); using the JIT launcher", type(e).__name__, e)
        ck = self.kernel[grid](*args, num_warps=num_warps)
        if _direct and _knobs is not None and hasattr(ck, "run") and hasattr(ck, "function"):
            if len(self._compiled) >= self.max_entries:
                self._compiled.clear()
            self._compiled[key] = ck
