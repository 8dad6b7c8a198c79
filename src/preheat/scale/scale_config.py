"""How the engines are spread (no Ray import: the CLI reads it before Ray is needed)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleConfig:
    """``preheat serve --replicas N`` and its routing options."""

    replicas: int = 2
    ray_address: str | None = None  # None: a local Ray instance of this process's own
    route_load_spread: int = 16  # routing.LoadGuard
    route_load_ratio: float = 1.5
    routing_stats_seconds: float = 2.0  # how often replicas report what they hold
