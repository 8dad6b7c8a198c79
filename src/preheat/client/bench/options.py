"""What ``preheat bench``'s command line decides and its run uses: what the experiments
send (``BenchOptions``), and where they run and their results go (``BenchRun``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from preheat.client.bench.pricing import PriceTable


@dataclass(frozen=True)
class BenchOptions:
    """What the experiments send."""

    model: str
    max_tokens: int  # of each reply
    users: int
    batch_items: int  # questions of the batch experiment
    doc_tokens: int | None  # None: as long as the context window allows
    document: Path
    cache_ttl: str  # of every breakpoint: "5m" or "1h"
    quick: bool


@dataclass(frozen=True)
class BenchRun:
    """Where the experiments run and where their results go."""

    base_url: str | None  # None: start `preheat serve` for the run
    api_key: str
    serve_args: list[str]
    json: bool
    plot: Path | None
    prices: PriceTable
