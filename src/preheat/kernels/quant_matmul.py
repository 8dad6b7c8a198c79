"""The quantized-weight matmul kernel (``quant_matmul.cpp``): built once per machine, on first use.

PyTorch's int4 CPU kernel converts weights to floats and multiplies in float, so eight
rows cost three times one row, which caps batched decoding. This kernel multiplies 4-bit
(Q4_1) or 8-bit (Q8_0) weight codes by activations rounded to int16 per group of 32,
as exact integer dot products (on AVX-512 VNNI, or AVX2 at about half the pace per cycle),
so a batch of decode rows costs little more than one, and results stay within float rounding
of the dequantized model.
``pack`` quantizes float weights into that form; ``gguf_repack.repack`` moves a GGUF
file's own blocks (Q4_0 ... Q6_K, IQ4) into it without changing a weight, keeping K-quants'
super-block scales compact (the kernel multiplies them out exactly), or a scale per 16 inputs
where the file's need them.

It needs a CPU with AVX-512 VNNI, or AVX2 with FMA and F16C, and a C++ compiler (ninja comes
with preheat); both instruction sets build from one source and give the same results. Where
neither is there, ``load_quant_kernel`` says so once and returns False, and callers use
PyTorch's kernels instead.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from preheat.kernels.build import AVX2, AVX512_VNNI, build_kernel, widest

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("quant_matmul.cpp")
GROUP = 32  # inputs per scale/min pair, as in GGUF's Q4_1 and Q8_0
TILE = 16  # output rows per tile of the packed layout (an AVX-512 register)


@dataclass
class PackedWeight:
    """A weight [out, in] in the kernel's layout (see quant_matmul.cpp's header):
    w = scale * code + min, a scale and min per 32 inputs, or per 16 ([..., 2, 16]).

    With T = out / 16 tiles and G = in / 32 groups, (scale, min) is one of:

    - plain: both [T, G, 16] float16 or float32, or both [T, G, 2, 16] float32 (per 16 inputs);
    - implied min: scale [T, G, 16] float16, min [T] float32, a factor per tile:
      min = min[t] * scale (GGUF's Q4_0, Q5_0, Q8_0, IQ4_NL: -8, -16, -128, -128);
    - super-blocks (Q4_K, Q5_K): scale [T, G, 2, 16] uint8, the sub-scale s_j at [t, g, 0]
      and sub-min m_j at [t, g, 1]; min [T, G / 8, 2, 16] float16, d at [t, b, 0] and
      -dmin at [t, b, 1] for groups 8b .. 8b + 7: scale = d * s_j, min = -dmin * m_j;
    - symmetric per 16 (Q6_K): scale [T, G, 2, 16] int8, s per 16 inputs; min [T, G / 8, 16]
      float16, d per 8 groups: scale = d * s, min = -32 * scale.

    The compact forms' products are exact in float32, so the kernel's results equal those of
    the plain float32 scale and min they stand for, bit for bit. Every tensor leads with the
    tile: rows of tiles concatenate along dim 0.
    """

    codes: torch.Tensor  # [out / 16, in / 32, 64 * bits] uint8, bits 4, 6 or 8
    scale: torch.Tensor  # see above
    min: torch.Tensor  # see above


def kernel_isa() -> str | None:
    """The instruction set the kernel is built for on this CPU: "AVX-512 VNNI", "AVX2" or None."""
    isa = widest(AVX512_VNNI, AVX2)
    return isa.name if isa else None


@functools.cache
def load_quant_kernel() -> bool:
    """Register ``torch.ops.preheat.quant_matmul``, compiling it on a first run; False if it cannot run."""
    isa = widest(AVX512_VNNI, AVX2)
    if isa is None:
        logger.info("this CPU has neither AVX-512 VNNI nor AVX2: quantized weights use PyTorch's kernels")
        return False
    logger.info("loading the %s matmul kernel (a first start on this machine compiles it, ~10 s)", isa.name)
    return build_kernel("preheat_quant", SOURCE, ["-O3", "-fopenmp", *isa.flags], what=f"{isa.name} matmul kernel",
                        fallback="quantized weights use PyTorch's kernels")


def quantize_groups(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes [out, in/32, 32] uint8 and float16 scale, min [out, in/32] with w ~= scale * code + min.

    4 bits is GGUF's Q4_1: a group's minimum maps to code 0, its maximum to 15. 8 bits is
    Q8_0 (symmetric, largest magnitude at +-127) with codes shifted by 128 so they are
    unsigned, as VNNI needs. Codes are chosen against the float16-rounded scale and min,
    so weights that came from a Q4_1 or Q8_0 file keep their codes.
    """
    out_dim, in_dim = weight.shape
    if in_dim % GROUP:
        raise ValueError(f"quantized weights need the input size to be a multiple of {GROUP}, got {in_dim}")
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    groups = weight.float().reshape(out_dim, in_dim // GROUP, GROUP)
    if bits == 4:
        low = groups.amin(-1)
        scale = (groups.amax(-1) - low) / 15
    else:
        scale = groups.abs().amax(-1) / 127
    scale = scale.half()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # flat group (or below fp16)
    low = low.half() if bits == 4 else -128 * scale  # exact: a power of two
    codes = ((groups - low.float()[..., None]) / scale.float()[..., None]).round()
    return codes.clamp(0, 2**bits - 1).to(torch.uint8), scale, low


def pack(weight: torch.Tensor, bits: int) -> PackedWeight:
    """Quantize a weight [out, in] and lay it out for the kernel."""
    out_dim, in_dim = weight.shape
    if out_dim % TILE:
        raise ValueError(f"the VNNI kernel needs the output size to be a multiple of {TILE}, got {out_dim}")
    codes, scale, low = quantize_groups(weight, bits)
    tiles, groups = out_dim // TILE, in_dim // GROUP
    # [tile, row l, group, quad j, kk] -> [tile, group, j, l, kk]: row l's input 4j + kk
    c = codes.reshape(tiles, TILE, groups, 8, 4).permute(0, 2, 3, 1, 4).reshape(tiles, groups, 8, 64)
    if bits == 4:  # quads 2p and 2p + 1 share chunk p: low and high nibble
        c = c[:, :, 0::2] | (c[:, :, 1::2] << 4)

    def per_tile(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(tiles, TILE, groups).transpose(1, 2).contiguous()

    return PackedWeight(c.reshape(tiles, groups, -1).contiguous(), per_tile(scale), per_tile(low))


def quant_matmul(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """x [..., in] @ W.T -> [..., out] in x's dtype (computed in float32); requires ``load_quant_kernel()``."""
    return torch.ops.preheat.quant_matmul(x, w.codes, w.scale, w.min)
