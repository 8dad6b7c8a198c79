"""The decoder stack of a pure decode step in one C++ call (``decode_stack.cpp``).

A decode step runs about 25 small ops per layer; from Python each costs several
microseconds of overhead, which on a small model is as much as the arithmetic. The
C++ class runs the same ops and kernels in the same order, so its rows are bitwise
the Python loop's. It serves models whose decoder linears all run on preheat's quantized
matmul and whose attention runs on preheat's paged kernel; others keep the Python loop.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

from preheat.kernels.build import build_kernel
from preheat.kernels.paged_attention import load_attention_kernel
from preheat.kernels.quant_matmul import load_quant_kernel

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decode_stack.cpp")
_FLAGS = ["-O3"]


@functools.cache
def load_decode_stack_kernel() -> bool:
    """Register ``torch.classes.preheat.DecodeStack`` (after the kernels it calls); False if it cannot run."""
    if not (load_quant_kernel() and load_attention_kernel()):
        return False
    logger.info("loading the fused decode stack (a first start on this machine compiles it)")
    return build_kernel("preheat_decode_stack", SOURCE, _FLAGS, what="fused decode stack",
                        fallback="decode steps run layer by layer from Python")
