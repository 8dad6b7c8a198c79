"""Which replica a request goes to: the policy ``router.py`` applies, as a pure function.

A request names its tenant and the prefixes it starts with (``RouteTicket``); each replica
reports, per tenant, the prefixes it holds. The replica holding the longest of the
request's prefixes wins, so a cached prompt is read where it was written. Affinity yields
to load when the replicas are imbalanced (the busiest has ``spread`` more requests than
the idlest and ``ratio`` times its load, as vLLM's router and SGLang's gateway decide):
then, and when no replica holds any of the prefixes, the least loaded replica takes it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

MATCH, LOAD, NONE, TARGET = "match", "load", "none", "target"


@dataclass(frozen=True)
class ReplicaView:
    """A replica as the router sees it when a request arrives."""

    replica_id: str
    load: int  # requests on it, running or waiting
    holds: Mapping[str, Set[int]]  # tenant -> hashes of the prefixes it holds


@dataclass(frozen=True)
class LoadGuard:
    """When load outweighs affinity (``spread`` and ``ratio`` as the module says)."""

    spread: int = 16
    ratio: float = 1.5

    def imbalanced(self, loads: Sequence[int]) -> bool:
        busiest, idlest = max(loads), min(loads)
        return busiest - idlest > self.spread and busiest > self.ratio * idlest


@dataclass(frozen=True)
class Decision:
    replica_id: str
    reason: str  # MATCH, LOAD, NONE or TARGET
    matched_tokens: int = 0  # the longest of the request's prefixes the replica holds


def longest_held(replica: ReplicaView, tenant: str, prefixes: Mapping[int, int]) -> int:
    """Tokens of the longest of ``prefixes`` (length -> hash) the replica holds for ``tenant``."""
    held = replica.holds.get(tenant, frozenset())
    return max((length for length, digest in prefixes.items() if digest in held), default=0)


def choose(replicas: Sequence[ReplicaView], tenant: str, prefixes: Mapping[int, int],
           guard: LoadGuard = LoadGuard(), target: str | None = None) -> Decision | None:
    """The replica for a request, or None when there is none.

    Ties go to the less loaded replica, then to the one listed first (the caller shuffles
    the list so equal replicas share the work). A ``target`` that is among the replicas
    is chosen as it is; one that is gone is ignored (the caller sees another replica
    answer).
    """
    if not replicas:
        return None
    if target is not None and any(r.replica_id == target for r in replicas):
        return Decision(target, TARGET)
    idlest = min(replicas, key=lambda r: r.load)
    if len(replicas) > 1 and guard.imbalanced([r.load for r in replicas]):
        return Decision(idlest.replica_id, LOAD)
    matched = [longest_held(r, tenant, prefixes) for r in replicas]
    best = max(matched)
    if best == 0:
        return Decision(idlest.replica_id, NONE)
    winner = min((r for r, m in zip(replicas, matched) if m == best), key=lambda r: r.load)
    return Decision(winner.replica_id, MATCH, best)
