"""The engine deployment's request router: Serve calls it to place each request.

It lives in the caller's process (the ingress), one per deployment handle. Replicas'
holdings reach it through Serve's controller, seconds old (``record_routing_stats``
every ``request_routing_stats_period_s``), so it also remembers where it sent each
prefix for a while: the next request with that prefix follows even before the replica's
report says it holds it. The choice itself is ``routing.choose``.
"""
from __future__ import annotations

import random
from collections import Counter

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from preheat.scale.held_prefixes import HeldPrefixes
from preheat.scale.route_ticket import RouteTicket
from preheat.scale.routing import LoadGuard, ReplicaView, choose


class PrefixAffinityRouter(RequestRouter):
    """Routes by tenant and prefix (``routing.py``), guarded by load."""

    def initialize_state(self, spread: int = 16, ratio: float = 1.5,
                         remember_seconds: float = 30.0) -> None:
        self._guard = LoadGuard(spread, ratio)
        self._remember_seconds = remember_seconds
        self._sent: dict[str, HeldPrefixes] = {}  # replica id -> prefixes sent there lately
        # requests this router placed and not yet completed, per replica: Serve's own queue
        # lengths are probed lazily, so a burst would otherwise see every replica idle
        self._in_flight: Counter[str] = Counter()
        self._placed: dict[str, str] = {}  # internal request id -> replica id
        self._reported: dict[str, tuple[object, dict[str, frozenset[int]]]] = {}

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # This ranking is whole: if no replica takes the request now (full, or its queue
            # length probe timed out), Serve must wait before asking again. Left False, it
            # asks again at once, forever, each time probing the replicas: a flood of
            # probes that keeps them too busy to answer the next ones.
            pending_request.routing_context.should_backoff = True
        ticket = _ticket_of(pending_request)
        if ticket is None or not candidate_replicas:  # not a routed call: Serve's own choice
            return [candidate_replicas]
        replicas = list(candidate_replicas)
        random.shuffle(replicas)  # equal replicas share the work
        by_id = {r.replica_id.unique_id: r for r in replicas}
        views = [self._view(r, ticket.tenant) for r in replicas]
        decision = choose(views, ticket.tenant, ticket.prefixes, self._guard, ticket.target)
        ticket.decision = decision.reason
        ticket.replica_ids = sorted(r.replica_id.unique_id for r in self.curr_replicas.values())
        if ticket.prefixes:
            self._sent.setdefault(decision.replica_id, HeldPrefixes()).hold(
                ticket.tenant, ticket.prefixes.values(), self._remember_seconds)
        self._count(pending_request, decision.replica_id)
        chosen = by_id[decision.replica_id]
        return [[chosen], [r for r in replicas if r is not chosen]]  # the rest if it is full

    def _count(self, pending_request: PendingRequest, replica_id: str) -> None:
        """One more request on ``replica_id`` until it completes (or is never sent)."""
        request_id = pending_request.metadata.internal_request_id
        if request_id in self._placed:  # chosen again after a backoff
            self._in_flight[self._placed[request_id]] -= 1
        else:
            pending_request.future.add_done_callback(
                lambda future: future.cancelled() and self._uncount(request_id))
        self._placed[request_id] = replica_id
        self._in_flight[replica_id] += 1

    def _uncount(self, request_id: str) -> None:
        replica_id = self._placed.pop(request_id, None)
        if replica_id is not None:
            self._in_flight[replica_id] -= 1

    def on_request_completed(self, replica_id, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        self._uncount(internal_request_id)

    def _view(self, replica: RunningReplica, tenant: str) -> ReplicaView:
        replica_id = replica.replica_id.unique_id
        stats = replica.routing_stats or {}
        probed = self.replica_queue_len_cache.get(replica.replica_id)
        if probed is None:  # not probed lately: the replica's own report
            probed = stats.get("running", 0) + stats.get("waiting", 0)
        load = max(probed, self._in_flight[replica_id])  # another ingress's show in probed
        held = self._reported_holdings(replica_id, stats).get(tenant, frozenset())
        sent = self._sent.get(replica_id)
        if sent is not None:
            held = held | sent.live(tenant)
        return ReplicaView(replica_id, load, {tenant: held})

    def _reported_holdings(self, replica_id: str, stats: dict) -> dict[str, frozenset[int]]:
        """The report's hashes as sets, converted once per report."""
        cached = self._reported.get(replica_id)
        if cached is None or cached[0] is not stats:
            holdings = {t: frozenset(h) for t, h in stats.get("prefixes", {}).items()}
            self._reported[replica_id] = cached = (stats, holdings)
        return cached[1]

    def on_replica_actor_died(self, replica_id) -> None:
        super().on_replica_actor_died(replica_id)
        self._sent.pop(replica_id.unique_id, None)
        self._reported.pop(replica_id.unique_id, None)


def _ticket_of(pending_request: PendingRequest | None) -> RouteTicket | None:
    if pending_request is None:
        return None
    for arg in (*pending_request.args, *pending_request.kwargs.values()):
        if isinstance(arg, RouteTicket):
            return arg
    return None
