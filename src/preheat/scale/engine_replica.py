"""One engine replica: the Serve deployment that owns an engine.

Each replica runs its own engine core process (``EngineProcess``), with its own KV pool
and its own disk tier folder, named by the replica's rank so a replica Serve starts in
place of a dead one finds the pinned prefixes its predecessor wrote there.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, replace

from ray import serve

from preheat.cache_dir import resolve_cache_dir
from preheat.config import EngineConfig
from preheat.engine import EngineError, Finished, GenerationRequest, ReplicaState
from preheat.engine.engine_process import EngineProcess
from preheat.scale.held_prefixes import CACHED_SECONDS, HeldPrefixes
from preheat.scale.prefix_hashes import prefix_hashes
from preheat.scale.replica_messages import Accepted, Declined, ReplicaReport
from preheat.scale.route_ticket import RouteTicket

log = logging.getLogger(__name__)


class EngineReplica:
    """The engine deployment's class (``app.py`` gives it its Serve options)."""

    def __init__(self, config: EngineConfig, log_level: str = "INFO"):
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        disk_dir = config.kv_disk_dir or resolve_cache_dir(config.cache_dir) / "kv"
        config = replace(config, kv_disk_dir=disk_dir / f"replica-{context.rank.rank}")
        self.engine = EngineProcess.start(config, log_level)
        self.held = HeldPrefixes()
        log.info("replica %s: %s, disk tier in %s", self.replica_id, self.engine.model_id,
                 config.kv_disk_dir)

    async def generate(self, request: GenerationRequest,
                       ticket: RouteTicket) -> AsyncIterator[object]:
        """``Accepted`` (or ``Declined``), then the request's events, a list per step.

        When the ingress stops reading (its client went away), Serve cancels this
        generator and the engine drops the request.
        """
        try:
            stream = await self.engine.submit(request)
        except EngineError as err:
            yield Declined(err)
            return
        yield Accepted(self.replica_id)
        self._hold_prompt(request, ticket)
        try:
            async for events in stream.steps():
                if isinstance(events[-1], Finished) and request.hold_seconds > 0:
                    self._hold_reply(request, events[-1])
                yield events
        except EngineError as err:
            yield [err]
        finally:
            stream.abort()  # a no-op once finished

    def _hold_prompt(self, request: GenerationRequest, ticket: RouteTicket) -> None:
        """What this request leaves in the cache: its pinned prefixes for their TTLs, the
        rest of its prompt for a while."""
        self.held.hold(request.namespace, ticket.prefixes.values(), CACHED_SECONDS)
        for breakpoint in request.breakpoints:
            self.held.hold(request.namespace, [digest for length, digest in ticket.prefixes.items()
                                               if length <= breakpoint.position], breakpoint.ttl)

    def _hold_reply(self, request: GenerationRequest, finished: Finished) -> None:
        """A thread's turn: its prompt and reply are held for the next turn."""
        held = prefix_hashes([*request.prompt_ids, *finished.output_ids])
        self.held.hold(request.namespace, held.values(), request.hold_seconds)

    async def describe(self, ticket: RouteTicket) -> ReplicaReport:
        """This replica's state (the ticket lets the ingress aim the call at it)."""
        stats = await self.engine.stats()
        return ReplicaReport(ReplicaState.of(self.replica_id, self.engine.pid, stats), stats,
                             self.engine.model_id, self.engine.context_window)

    async def record_routing_stats(self) -> dict:
        """For the router: the prefixes held per tenant (hashes), and the engine's load."""
        report: dict = {"prefixes": self.held.report()}
        try:
            stats = await self.engine.stats()
        except EngineError:  # restarting: what it held is on its disk tier still
            return report
        return {**report, **asdict(ReplicaState.of(self.replica_id, self.engine.pid, stats))}

    def check_health(self) -> None:
        """Serve replaces a replica whose engine is gone for good."""
        if self.engine.failed:
            raise RuntimeError("the engine process has exited and could not start again")

    def __del__(self) -> None:
        if hasattr(self, "engine"):  # not when the engine failed to start
            self.engine.shutdown()
