"""What the engine reports of itself: a snapshot of its queues, KV pool and cache tiers."""
from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class EngineStats:
    """The engine's state as of one moment (``/health``, ``/metrics``); counters count
    since the engine started."""

    running: int
    waiting: int
    free_blocks: int
    total_blocks: int
    cached_blocks: int
    pinned_blocks: int
    preemptions: int
    aborted: int  # requests stopped by their caller (e.g. a client that hung up)
    failed: int  # requests ended by a failure of their own in the engine
    block_size: int
    pool_bytes: int
    pinned_entries: int  # live pinned prefixes, in RAM or on disk
    disk_entries: int  # pinned prefixes with a copy on disk
    disk_bytes: int
    disk_quota_bytes: int  # 0: no disk tier
    disk_reads: int  # hits whose blocks were read back from disk
    prompt_tokens: int  # of admitted requests, all told
    prompt_tokens_cached: int  # of those, found in the KV cache (reported as read or not)
    # speculative decoding: draft tokens verified and accepted; sequence-steps that verified
    # a draft, and the tokens those steps produced
    spec_drafted: int = 0
    spec_accepted: int = 0
    spec_verify_steps: int = 0
    spec_verify_tokens: int = 0
    interrupted_steps: int = 0  # steps of batch work stopped for an arriving interactive request
    # sliding-window layers' slots (engine/kv/window_slots.py); 0 for models without them
    window_slots: int = 0
    window_slots_free: int = 0

    @classmethod
    def total(cls, parts: list[EngineStats]) -> EngineStats:
        """Several engines' stats as one (each count summed): the engines behind a router."""
        summed = {f.name: sum(getattr(p, f.name) for p in parts) for f in fields(cls)}
        summed["block_size"] = max((p.block_size for p in parts), default=0)
        return cls(**summed)


@dataclass(frozen=True)
class ReplicaState:
    """One engine serving the API (``/health``'s ``replicas``): a lone engine, or each
    replica behind a Ray Serve router (``preheat.scale``)."""

    id: str
    pid: int  # of the process that owns the engine (its core process)
    running: int
    waiting: int
    pinned_entries: int
    free_blocks: int
    routed: dict[str, int] = field(default_factory=dict)  # requests routed here, by reason

    @classmethod
    def of(cls, replica_id: str, pid: int, stats: EngineStats) -> ReplicaState:
        return cls(replica_id, pid, stats.running, stats.waiting, stats.pinned_entries,
                   stats.free_blocks)
