"""What one replica holds in its cache, by tenant, as the router needs to know it.

The replica records the prefixes of what it served, each until it is likely gone: a
pinned prefix for its cache TTL (refreshed on every hit, as the engine's pin is), the rest
of a prompt for a while the prefix cache usually keeps it, a message thread's turn for as
long as the engine holds it. Only hashes leave the replica (``prefix_hashes.py``).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable

# An unpinned prompt stays in the prefix cache until memory pressure evicts it; how long
# that is can't be known here, so the router is told a while. A wrong guess costs one
# prefill elsewhere, never a wrong answer.
CACHED_SECONDS = 120.0


class HeldPrefixes:
    """Prefix hashes per tenant, each with the time it is held until."""

    def __init__(self, capacity: int = 50_000, clock: Callable[[], float] = time.monotonic):
        self.capacity = capacity  # hashes in all; beyond it the soonest to expire go
        self._clock = clock
        self._until: dict[str, dict[int, float]] = {}  # tenant -> hash -> held until

    def __len__(self) -> int:
        return sum(len(held) for held in self._until.values())

    def hold(self, tenant: str, hashes: Iterable[int], seconds: float) -> None:
        """Held ``seconds`` from now (never shortening a longer hold)."""
        until = self._clock() + seconds
        held = self._until.setdefault(tenant, {})
        for digest in hashes:
            held[digest] = max(until, held.get(digest, until))
        if len(self) > self.capacity:
            self._drop_soonest(len(self) - self.capacity)

    def live(self, tenant: str) -> frozenset[int]:
        """The tenant's hashes held now."""
        now = self._clock()
        return frozenset(d for d, until in self._until.get(tenant, {}).items() if until > now)

    def report(self) -> dict[str, list[int]]:
        """Live hashes by tenant, sorted (the same holdings give the same report, so Ray
        re-broadcasts only changes); expired ones are dropped."""
        now = self._clock()
        for tenant in list(self._until):
            self._until[tenant] = {d: u for d, u in self._until[tenant].items() if u > now}
            if not self._until[tenant]:
                del self._until[tenant]
        return {tenant: sorted(held) for tenant, held in sorted(self._until.items())}

    def _drop_soonest(self, count: int) -> None:
        entries = sorted((until, tenant, digest) for tenant, held in self._until.items()
                         for digest, until in held.items())
        for _, tenant, digest in entries[:count]:
            del self._until[tenant][digest]
