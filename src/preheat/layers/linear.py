"""Linear layers: dense, or 4-bit weights for fast CPU decoding.

Dense layers keep the model's own dtype and match the reference exactly. The
int4 form stores each weight row in groups of 32 as 4-bit codes with a bf16
scale and zero per group (the layout of GGUF's Q4_1, so Q4_1 weights convert
without loss in the codes) and multiplies with PyTorch's int4 CPU kernel in
bf16: a quarter of the memory traffic, which is what bounds decoding on a CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GROUP = 32


class Linear:
    """y = x @ W.T (+ b) with W of shape [out, in]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Int4Linear:
    """Weight-only int4 (asymmetric, groups of 32 along the input dim), bf16 compute."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.bias = bias
        self.packed, self.scale_zero = quantize_int4(weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.to(torch.bfloat16), self.packed, GROUP, self.scale_zero).to(x.dtype)
        return y if self.bias is None else y + self.bias


def quantize_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes packed for the CPU kernel, and [in / 32, out, 2] (scale, zero) in bf16.

    The kernel computes w = (code - 8) * scale + zero; a group's minimum maps to
    code 0 and its maximum to 15, as GGUF's Q4_1 quantizer does.
    """
    out_dim, in_dim = weight.shape
    if in_dim % GROUP:
        raise ValueError(f"int4 needs the input size to be a multiple of {GROUP}, got {in_dim}")
    groups = weight.float().reshape(out_dim, in_dim // GROUP, GROUP)
    low = groups.amin(-1, keepdim=True)
    scale = (groups.amax(-1, keepdim=True) - low) / 15
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = ((groups - low) / scale).round().clamp(0, 15).reshape(out_dim, in_dim)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    scale_zero = torch.stack([scale, low + 8 * scale], dim=-1).reshape(out_dim, in_dim // GROUP, 2)
    return packed, scale_zero.transpose(0, 1).contiguous().to(torch.bfloat16)


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None, int4: bool) -> Linear | Int4Linear:
    return Int4Linear(weight, bias) if int4 else Linear(weight, bias)
