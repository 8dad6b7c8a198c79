"""A forward pass that may be stopped between layers by another thread or process."""
from __future__ import annotations

from dataclasses import dataclass

import torch


class StepInterrupted(Exception):
    """The forward pass stopped between two layers because its ``StopSignal`` fired.

    Its outputs are gone; the KV it wrote for the step's new tokens is garbage that the
    next run of those tokens overwrites (nothing reads past a sequence's committed tokens)."""


@dataclass(frozen=True)
class StopSignal:
    """Stop once ``cell[0]`` (shared memory someone else writes) no longer equals ``value``."""

    cell: torch.Tensor  # [1] int64
    value: int

    def fired(self) -> bool:
        return int(self.cell[0]) != self.value
