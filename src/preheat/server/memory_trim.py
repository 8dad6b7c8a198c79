"""Give the API process's freed heap back to the operating system once it goes idle.

A large request (a body of megabytes, a prompt of millions of tokens to count or refuse)
allocates hundreds of MB for a moment in the tokenizer and the JSON parser, on whichever
thread ran it. glibc keeps what was freed in per-thread arenas for reuse, so the process's
RSS stays at its peak long after: six concurrent 9 MB prompts left a 6 GB process. When no
request has been in flight for a moment, ``malloc_trim(0)`` returns those free pages.
Elsewhere than glibc (musl, macOS) this does nothing.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

IDLE_SECONDS = 2.0  # quiet this long before trimming: never mid-burst


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``; None where the C library has none."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


class MemoryTrimmer:
    """Trims once after each busy period (``in_flight`` says how many requests are running)."""

    def __init__(self, in_flight: Callable[[], int], idle_seconds: float = IDLE_SECONDS,
                 trim: Callable[[], object] | None = None):
        self._in_flight = in_flight
        self._idle_seconds = idle_seconds
        self._trim = trim or _malloc_trim()
        self.trims = 0

    async def run(self) -> None:
        if self._trim is None:
            return
        busy = False
        while True:
            await asyncio.sleep(self._idle_seconds)
            if self._in_flight():
                busy = True
            elif busy:
                busy = False
                self._trim()
                self.trims += 1
