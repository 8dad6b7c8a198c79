"""A fixed pool of KV-cache block ids with reference counts.

The tensors live in the model runner; this only tracks which block ids are
free and who holds the others. A block is shared copy-free by every sequence
and radix-tree node that references it and returns to the pool at refcount 0.
"""
from __future__ import annotations

from collections import deque


class OutOfBlocksError(RuntimeError):
    pass


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the pool needs at least one block of at least one token")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._refs = [0] * num_blocks
        self.total_refs = 0  # references held, all blocks together

    @property
    def num_free(self) -> int:
        return len(self._free)

    def refcount(self, block: int) -> int:
        return self._refs[block]

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` free blocks, each with refcount 1."""
        if n > len(self._free):
            raise OutOfBlocksError(f"asked for {n} blocks, {len(self._free)} free")
        blocks = [self._free.popleft() for _ in range(n)]
        for b in blocks:
            self._refs[b] = 1
        self.total_refs += n
        return blocks

    def incref(self, blocks: list[int]) -> None:
        for b in blocks:
            if self._refs[b] <= 0:
                raise ValueError(f"block {b} is free; cannot share it")
            self._refs[b] += 1
            self.total_refs += 1

    def decref(self, blocks: list[int]) -> None:
        for b in blocks:
            if self._refs[b] <= 0:
                raise ValueError(f"block {b} released more often than held")
            self._refs[b] -= 1
            self.total_refs -= 1
            if self._refs[b] == 0:
                self._free.append(b)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)
