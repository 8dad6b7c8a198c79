"""Fixtures of the KV cache's unit tests: a small pool of 4-token blocks, a tree over it,
and a clock moved by hand (starting well past zero, so no expiry is ever at 0)."""
from __future__ import annotations

import pytest
from engine_driver import FakeClock

from preheat.engine.kv.block_pool import BlockPool
from preheat.engine.kv.radix_cache import RadixCache

BS = 4


@pytest.fixture
def clock() -> FakeClock:
    clock = FakeClock()
    clock.now = 1000.0
    return clock


@pytest.fixture
def pool() -> BlockPool:
    return BlockPool(16, BS)


@pytest.fixture
def cache(pool, clock) -> RadixCache:
    return RadixCache(pool, clock=clock)
