"""Rotary position embeddings (rotate-half layout, as in Hugging Face Llama)."""
from __future__ import annotations

import math

import torch

RopeTables = tuple[torch.Tensor, torch.Tensor]  # cos and signed sin, [tokens, 1, head_dim]


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    # Llama 3.1 stretches low frequencies by `factor`, keeps high ones, and blends in between.
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    medium = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
    return torch.where(medium, blended, out)


def inv_frequencies(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "default":
        return inv_freq
    raise NotImplementedError(f"RoPE scaling type {kind!r} is not supported")


class RotaryEmbedding:
    """Precomputed cos/sin tables indexed by absolute position, full head width.

    The sin table carries the rotation's sign (-sin for the first half, sin for the
    second), so applying it takes three tensor ops instead of eight: it runs for every
    layer of every step.

    On a CPU the tables grow with the positions used (doubling, from 4096): a model with a
    128k window would otherwise hold 130 MB of them per base from the start. Each row is
    computed alone, so a grown table holds the values a whole one would.
    """

    _FIRST = 4096

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None,
                 device: torch.device, dtype: torch.dtype):
        self.inv_freq = inv_frequencies(head_dim, theta, scaling)
        self.max_positions = max_positions
        self.device, self.dtype = device, dtype
        self.cos = self.sin = torch.empty(0, head_dim, device=device, dtype=dtype)
        self._grow(max_positions if device.type != "cpu" else min(self._FIRST, max_positions))

    def _grow(self, n: int) -> None:
        freqs = torch.outer(torch.arange(n, dtype=torch.float64), self.inv_freq)
        cos, sin = freqs.cos(), freqs.sin()
        self.cos = torch.cat((cos, cos), dim=-1).to(device=self.device, dtype=self.dtype)
        self.sin = torch.cat((-sin, sin), dim=-1).to(device=self.device, dtype=self.dtype)

    def tables(self, positions: torch.Tensor) -> RopeTables:
        """cos and signed sin for each token, [tokens, 1, head_dim]; gathered once per forward."""
        if len(self.cos) < self.max_positions and positions.numel():
            need = int(positions.max()) + 1
            if need > len(self.cos):
                self._grow(min(max(need, 2 * len(self.cos)), self.max_positions))
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape [tokens, heads, head_dim] (rotate-half layout):
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), with the tables of ``tables``."""
    swapped = x.roll(x.shape[-1] // 2, dims=-1)  # (x2, x1)
    return torch.addcmul(x * cos, swapped, sin)
