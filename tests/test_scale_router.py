"""The Serve request router's adapter around ``routing.choose``, without a Ray cluster:
the router object is made bare and given stand-ins for what Serve hands it."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.serve", reason="the ray extra (pip install 'preheat[ray]')")

from ray.serve._private.request_router.common import (  # noqa: E402
    ReplicaQueueLengthCache, RequestRoutingContext)

from preheat.scale.route_ticket import RouteTicket  # noqa: E402
from preheat.scale.router import PrefixAffinityRouter  # noqa: E402


@dataclass(frozen=True)
class ReplicaId:
    unique_id: str


def replica(unique_id: str, prefixes: dict | None = None):
    return SimpleNamespace(replica_id=ReplicaId(unique_id),
                           routing_stats={"prefixes": prefixes or {}})


def router(replicas) -> PrefixAffinityRouter:
    made = PrefixAffinityRouter.__new__(PrefixAffinityRouter)  # Serve's __init__ wants a cluster
    made.initialize_state(spread=16, ratio=1.5)
    made._replicas = {r.replica_id: r for r in replicas}
    made._replica_queue_len_cache = ReplicaQueueLengthCache()
    return made


def pending(ticket: RouteTicket, request_id: str):
    return SimpleNamespace(args=[object(), ticket], kwargs={},
                           metadata=SimpleNamespace(internal_request_id=request_id),
                           routing_context=RequestRoutingContext(),
                           future=asyncio.get_running_loop().create_future())


async def test_every_attempt_asks_serve_to_back_off_before_the_next():
    """Left unset, Serve retries a request no replica took at once, forever (a probe flood)."""
    replicas = [replica("a"), replica("b"), replica("c")]
    request = pending(RouteTicket.probe("b"), "r1")
    ranks = await router(replicas).choose_replicas(replicas, request)
    assert request.routing_context.should_backoff
    assert [[r.replica_id.unique_id for r in rank] for rank in ranks][0] == ["b"]
    assert sorted(r.replica_id.unique_id for r in ranks[1]) == ["a", "c"]
    assert request.args[1].decision == "target"
    assert request.args[1].replica_ids == ["a", "b", "c"]


async def test_a_burst_is_spread_by_the_requests_placed_and_counted_back_when_done():
    replicas = [replica("a"), replica("b"), replica("c")]
    made = router(replicas)
    requests = [pending(RouteTicket(f"tenant-{i}"), f"r{i}") for i in range(12)]
    chosen = [(await made.choose_replicas(replicas, r))[0][0].replica_id.unique_id
              for r in requests]
    assert {c: chosen.count(c) for c in "abc"} == {"a": 4, "b": 4, "c": 4}
    for request, replica_id in zip(requests, chosen):
        made.on_request_completed(ReplicaId(replica_id),
                                  request.metadata.internal_request_id)
    assert sum(made._in_flight.values()) == 0
    never_sent = pending(RouteTicket("late"), "r-late")
    await made.choose_replicas(replicas, never_sent)
    never_sent.future.cancel()
    await asyncio.sleep(0)  # the done callback runs
    assert sum(made._in_flight.values()) == 0


async def test_a_reported_prefix_and_one_sent_lately_both_draw_their_tenant():
    ticket = RouteTicket("t", {64: 11, 128: 12})
    replicas = [replica("a"), replica("b", {"t": [11, 12]})]
    made = router(replicas)
    first = await made.choose_replicas(replicas, pending(ticket, "r1"))
    assert first[0][0].replica_id.unique_id == "b" and ticket.decision == "match"
    # a new prefix, reported nowhere yet: the replica it was sent to is remembered
    fresh = RouteTicket("u", {64: 21})
    home = (await made.choose_replicas(replicas, pending(fresh, "r2")))[0][0]
    again = RouteTicket("u", {64: 21, 128: 22})
    assert (await made.choose_replicas(replicas, pending(again, "r3")))[0][0] is home
    assert again.decision == "match"
