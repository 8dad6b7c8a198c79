"""Weights in GGUF's quantized forms, for the int4 and kernel tests."""
from __future__ import annotations

import torch

from preheat.kernels.quant_matmul import GROUP, quantize_groups


def q4_1_like(out_dim: int, in_dim: int, seed: int = 0) -> torch.Tensor:
    """Weights of GGUF Q4_1's form: per group of 32, d * code + m with codes 0..15 all used
    and d, m float16 values (as the file stores them)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (out_dim, in_dim // GROUP, GROUP), generator=g)
    codes[..., 0], codes[..., 1] = 0, 15
    d = (torch.rand(out_dim, in_dim // GROUP, 1, generator=g) * 0.01 + 0.001).half().float()
    m = (-torch.rand(out_dim, in_dim // GROUP, 1, generator=g) * 0.05).half().float()
    return (codes * d + m).reshape(out_dim, in_dim)


def dequantized(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` as ``quantize_groups`` stores it, back in float64: scale * code + min."""
    codes, scale, low = quantize_groups(w, bits)
    return (codes.double() * scale.double()[..., None] + low.double()[..., None]).reshape(w.shape)
