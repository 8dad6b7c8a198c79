"""RMSNorm, the normalization every supported family uses.

A family's checkpoint may store the norm's multiplier directly (Llama, Qwen) or as an
offset from one (Gemma computes ``x * (1 + w)``; llama.cpp's converter stores ``1 + w``
in the GGUF file). The weight kept here is always the multiplier itself, so one kernel
serves both forms: ``multiplier`` turns a stored weight into it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def multiplier(stored: torch.Tensor, offset: float) -> torch.Tensor:
    """The factor RMSNorm multiplies by, from a weight stored as ``factor - offset``.

    Computed in float32, as Gemma's reference adds one before it multiplies."""
    return stored.float() + offset if offset else stored


class RMSNorm:
    """y = x / rms(x) * weight over the last dimension (of any width: hidden or head_dim)."""

    def __init__(self, weight: torch.Tensor, eps: float):
        self.weight = weight
        self.eps = eps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
