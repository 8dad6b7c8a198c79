"""Where each layer's KV lives: the pool's blocks, or the window slots of sliding-window layers.

Layers that see the whole context keep K and V for every cached token, in the pool's
blocks. Sliding-window layers keep theirs in window slots (``window_slots.py``), held only
while a window still reads them, so their memory follows the window, not the context.
"""
from __future__ import annotations

from dataclasses import dataclass

# Window slots as a share of the pool's blocks when the pool is sized by memory (the floor
# lets one sequence run): running sequences need their windows, cached prefixes a window
# each where they resume. A pool sized in tokens gets a slot for each block instead.
WINDOW_SLOT_SHARE = 0.25


@dataclass(frozen=True)
class KVLayout:
    full_layers: tuple[int, ...]
    window_layers: tuple[int, ...]
    window: int  # the longest window, 0 when no layer has one

    @classmethod
    def of(cls, windows: tuple[int, ...]) -> KVLayout:
        """From each layer's window (0: the whole context). A model whose every layer is
        windowed keeps them all in the pool: its blocks would hold nothing else."""
        local = tuple(i for i, w in enumerate(windows) if w > 0)
        if len(local) == len(windows):
            local = ()
        full = tuple(i for i in range(len(windows)) if i not in local)
        return cls(full, local, max((windows[i] for i in local), default=0))

    @property
    def windowed(self) -> bool:
        return bool(self.window_layers)

    def places(self) -> list[tuple[bool, int]]:
        """Per model layer: (in the window slots, its index among the layers kept there)."""
        where: dict[int, tuple[bool, int]] = {}
        for j, i in enumerate(self.full_layers):
            where[i] = (False, j)
        for j, i in enumerate(self.window_layers):
            where[i] = (True, j)
        return [where[i] for i in range(len(where))]

    def bytes_per_block(self, layer_block_bytes: int) -> tuple[int, int]:
        """(bytes of one pool block, of one window slot) given one layer's block of K and V."""
        return len(self.full_layers) * layer_block_bytes, len(self.window_layers) * layer_block_bytes

    def budget_per_block(self, layer_block_bytes: int) -> int:
        """Bytes a pool block costs with its share of window slots: what sizes the pool."""
        block, slot = self.bytes_per_block(layer_block_bytes)
        return block + int(slot * WINDOW_SLOT_SHARE)

    def num_slots(self, num_blocks: int, block_size: int, max_step_tokens: int, in_tokens: bool) -> int:
        """Window slots beside a pool of ``num_blocks``. A pool sized in tokens (``in_tokens``)
        promises that many tokens of context to whatever mix of requests comes: a slot for
        every block, so windows never run short before blocks do (slots are held only where
        blocks are). A pool sized by memory gets a share of it, at least one sequence's window
        and step, at most the pool."""
        if in_tokens:
            return num_blocks
        # a sequence holds its window, a block behind it, a step's blocks and the partial
        # blocks at both ends
        floor = -(-(self.window + max_step_tokens) // block_size) + 4
        return min(num_blocks, max(floor, int(num_blocks * WINDOW_SLOT_SHARE)))
