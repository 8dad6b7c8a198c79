"""What an engine replica sends the ingress, besides engine events (plain picklable data)."""
from __future__ import annotations

from dataclasses import dataclass

from preheat.engine import EngineError, EngineStats, ReplicaState


@dataclass(frozen=True)
class Accepted:
    """First of a request's stream: the replica admitted it (its events follow, one list
    per engine step)."""

    replica_id: str


@dataclass(frozen=True)
class Declined:
    """The replica's engine refused the request (too long, overloaded): the stream ends."""

    error: EngineError


@dataclass(frozen=True)
class ReplicaReport:
    """A replica's answer to ``describe``."""

    state: ReplicaState
    stats: EngineStats
    model_id: str
    context_window: int
