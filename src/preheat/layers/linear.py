"""Linear layers: dense, or 4-bit weights for fast CPU decoding.

Dense layers keep the model's own dtype and match the reference exactly. The
int4 forms store each weight row in groups of 32 as 4-bit codes with a scale
and minimum per group (the layout of GGUF's Q4_1, so Q4_1 weights convert
without loss in the codes): a quarter of fp16's memory traffic, which is what
bounds decoding on a CPU. Two kernels run them:

- ``QuantLinear``: preheat's kernel (integer dot products with the activations
  rounded to int16, on AVX-512 VNNI or AVX2); a batch of rows costs little more
  than one. It also runs 8-bit (Q8_0) weights, for the LM head.
- ``Int4Linear``: PyTorch's int4 CPU kernel in bf16, for CPUs with neither.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from preheat.kernels.quant_matmul import (GROUP, TILE, PackedWeight, load_quant_kernel, pack, quant_matmul,
                                          quantize_groups)


class Linear:
    """y = x @ W.T (+ b) with W of shape [out, in]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)


class Int4Linear:
    """Weight-only int4 (asymmetric, groups of 32 along the input dim), bf16 compute."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.bias = bias
        self.out_features = weight.shape[0]
        self.packed, self.scale_zero = quantize_int4(pad_rows(weight))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.to(torch.bfloat16), self.packed, GROUP, self.scale_zero).to(x.dtype)
        y = trim(y, self.out_features)
        return y if self.bias is None else y + self.bias


class QuantLinear:
    """4- or 8-bit weight codes with a scale and min per group of inputs; the kernel
    rounds activations to int16 per group of 32. Needs ``load_quant_kernel()``.

    Built from float weights (quantized here: lossy) or, with ``from_packed``, from a GGUF
    tensor's blocks repacked exactly (``kernels/gguf_repack.py``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, bits: int = 4):
        self.bias = bias
        self.out_features = weight.shape[0]
        self.weight = pack(pad_rows(weight), bits)

    @classmethod
    def from_packed(cls, weight: PackedWeight, out_features: int, bias: torch.Tensor | None) -> QuantLinear:
        layer = cls.__new__(cls)
        layer.weight, layer.out_features, layer.bias = weight, out_features, bias
        return layer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = trim(quant_matmul(x, self.weight), self.out_features)
        return y if self.bias is None else y + self.bias


class ConcatLinear:
    """Several linears over one input whose outputs are concatenated (q, k and v stored in
    different quantization types cannot share one packed matrix)."""

    def __init__(self, parts: list, bias: torch.Tensor | None = None):
        self.parts = parts
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([part(x) for part in self.parts], dim=-1)
        return y if self.bias is None else y + self.bias


def pad_rows(weight: torch.Tensor) -> torch.Tensor:
    """Zero rows up to a multiple of 16: both int4 kernels work on 16 outputs at a time,
    and not every model's sizes are multiples (a vocabulary of 32001, say)."""
    return F.pad(weight, (0, 0, 0, -weight.shape[0] % TILE))


def trim(y: torch.Tensor, out_features: int) -> torch.Tensor:
    return y if y.shape[-1] == out_features else y[..., :out_features]


def quantize_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes packed for PyTorch's kernel, and [in / 32, out, 2] (scale, zero) in bf16.

    That kernel computes w = (code - 8) * scale + zero.
    """
    codes, scale, low = quantize_groups(weight, bits=4)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        codes.reshape(weight.shape).to(torch.int32), 1)
    scale, low = scale.float(), low.float()
    scale_zero = torch.stack([scale, low + 8 * scale], dim=-1)  # [out, in / 32, 2]
    return packed, scale_zero.transpose(0, 1).contiguous().to(torch.bfloat16)


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None,
                int4: bool) -> Linear | QuantLinear | Int4Linear:
    if not int4:
        return Linear(weight, bias)
    return QuantLinear(weight, bias) if load_quant_kernel() else Int4Linear(weight, bias)


def make_head(weight: torch.Tensor, quantized: bool) -> Linear | QuantLinear:
    """The LM head: 8-bit on preheat's kernel, else bf16, when decoder weights are quantized."""
    if not quantized:
        return Linear(weight)
    return QuantLinear(weight, bits=8) if load_quant_kernel() else Linear(weight.to(torch.bfloat16))
