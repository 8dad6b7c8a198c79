"""KV memory of sliding-window layers, held only where some reader still needs it.

A model with local (sliding-window) layers keeps their K and V apart from the global
layers': a global block id, the currency of the pool, the radix tree and the disk tier,
owns a slot here only while a holder needs its local KV. A running sequence holds the
blocks its window still reaches; the radix tree holds, for each place a later request may
resume (a breakpoint, the end of a prompt or of a sequence), the window's worth of blocks
before it. Everything older is freed: a 32k-token context of a model with a 512-token window
keeps 32k tokens of global KV and about 512 tokens of local KV.

Every holder of a block's slot also holds the block itself in the pool, so a slot is always
released before its block can go to another prefix.
"""
from __future__ import annotations

import numpy as np
import torch

from preheat.engine.kv.block_pool import OutOfBlocksError


class WindowSlots:
    def __init__(self, num_slots: int, num_blocks: int, window: int, block_size: int):
        """``window``: the longest local layer's window, in tokens."""
        if num_slots < 1 or window < 1:
            raise ValueError("window slots need at least one slot and a window of one token")
        self.num_slots = num_slots
        self.window = window
        self.block_size = block_size
        self._slot = np.full(num_blocks, -1, dtype=np.int64)  # global block -> slot, -1: none
        self._refs = np.zeros(num_blocks, dtype=np.int64)
        # a stack: the slot freed last is taken first, so the pages a cache of window slots
        # has touched stay few when fewer are in use than it holds
        self._free = list(range(num_slots - 1, -1, -1))
        # a view the model runner maps block tables through (-1 read as slot 0: such blocks
        # lie before every window that reads them)
        self.slot_of = torch.from_numpy(self._slot)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def first_needed(self, position: int) -> int:
        """Index of the first block a query at ``position`` reads: keys position - window < t."""
        return max(0, position - self.window + 1) // self.block_size

    def has(self, block: int) -> bool:
        return self._slot[block] >= 0

    def slots_of(self, blocks: list[int]) -> list[int]:
        """The slots of ``blocks`` (numpy: safe off the engine thread, no torch op)."""
        return self._slot[blocks].tolist()

    def hold(self, blocks: list[int]) -> None:
        """Take a reference on each block's slot, giving a slot to blocks without one."""
        fresh = sum(1 for b in blocks if self._refs[b] == 0)
        if fresh > len(self._free):
            raise OutOfBlocksError(f"asked for {fresh} window slots, {len(self._free)} free")
        for b in blocks:
            if self._refs[b] == 0:
                self._slot[b] = self._free.pop()
            self._refs[b] += 1

    def share(self, blocks: list[int]) -> bool:
        """Take a reference on each block's existing slot; False (and none taken) if one has none."""
        if any(self._slot[b] < 0 for b in blocks):
            return False
        for b in blocks:
            self._refs[b] += 1
        return True

    def drop(self, blocks: list[int]) -> None:
        for b in blocks:
            if self._refs[b] <= 0:
                raise ValueError(f"window slot of block {b} released more often than held")
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free.append(int(self._slot[b]))
                self._slot[b] = -1

    def resumable(self, blocks: list[int]) -> int:
        """The most leading blocks of ``blocks`` a request may resume after: every block its
        window reads from there has a slot."""
        missing_before = [-1] * (len(blocks) + 1)  # index of the last slotless block before i
        for i, b in enumerate(blocks):
            missing_before[i + 1] = i if self._slot[b] < 0 else missing_before[i]
        for k in range(len(blocks), 0, -1):
            if missing_before[k] < self.first_needed(k * self.block_size):
                return k
        return 0
