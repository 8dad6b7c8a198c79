"""The gated feed-forward block: down(act(gate(x)) * up(x)), gate and up in one matmul."""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

# Hugging Face's `hidden_act` names, and the GGUF families that imply one.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
}


class GatedMLP:
    """``gate_up`` maps hidden -> [gate | up] (2 x intermediate); ``down`` maps back."""

    def __init__(self, gate_up, down, activation: str = "silu"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not supported ({', '.join(ACTIVATIONS)})")
        self.gate_up = gate_up
        self.down = down
        self.activation = activation
        self._act = ACTIVATIONS[activation]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(self._act(gate) * up)
