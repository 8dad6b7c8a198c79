"""Interactive requests, counted where a running step of batch work can see them.

Batch work yields to interactive work (``scheduler.py``), but a step cannot be left
between two of its tensor ops by the loop that runs steps: an interactive request that
arrives while a step of batch work runs would wait for the whole step. So every
interactive request bumps this counter as it is handed to the engine, and a step that
holds only batch work watches it between layers: once it moves, the step stops where it
is, commits nothing (the KV it wrote for its new tokens is written again when it runs
next), and the interactive request starts at once.

The counter lives in shared memory: the API process bumps it, the engine core process
(``engine_core.py``) or thread (``async_engine.py``) reads it, and the model's kernels
read it mid-step (``buffer()``). Torch-free: the API process imports this module.
"""
from __future__ import annotations

import ctypes
import multiprocessing

from preheat.engine.request import GenerationRequest


class InteractiveArrivals:
    """A count of interactive requests handed to the engine, shareable with a spawned process."""

    def __init__(self) -> None:
        # A raw int64 in shared memory: one writer (the API's event loop), readers that
        # only compare it with an earlier reading, so no lock is needed.
        self._cell = multiprocessing.get_context("spawn").RawValue(ctypes.c_int64, 0)

    def arrived(self, request: GenerationRequest) -> None:
        """Count ``request`` if it is interactive (batch work never stops a step). Call it
        after the request is on its way to the engine (sent or queued), so a step that
        misses the count has the request in hand."""
        if not request.background:
            self._cell.value += 1

    @property
    def count(self) -> int:
        return self._cell.value

    def buffer(self) -> memoryview:
        """The counter's 8 bytes (native int64), for the engine's kernels to watch."""
        return memoryview(self._cell).cast("B")
