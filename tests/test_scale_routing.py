"""The scale-out room's Ray-free parts: routing policy, prefix names, held prefixes."""
from __future__ import annotations

import pytest

from preheat.engine import CacheBreakpoint, GenerationRequest, SamplingParams
from preheat.scale.held_prefixes import HeldPrefixes
from preheat.scale.prefix_hashes import CHUNK_TOKENS, prefix_hashes
from preheat.scale.route_ticket import RouteTicket
from preheat.scale.routing import (LOAD, MATCH, NONE, TARGET, LoadGuard, ReplicaView, choose,
                                   longest_held)


def view(replica_id: str, load: int = 0, **holds: set[int]) -> ReplicaView:
    return ReplicaView(replica_id, load, holds)


PREFIXES = {64: 101, 128: 102, 300: 103}  # a request's prefixes: length -> hash


# ---- routing.choose --------------------------------------------------------------------------


def test_the_replica_holding_the_longest_prefix_wins():
    replicas = [view("a", t={101}), view("b", t={101, 102}), view("c")]
    decision = choose(replicas, "t", PREFIXES)
    assert (decision.replica_id, decision.reason, decision.matched_tokens) == ("b", MATCH, 128)


def test_another_tenants_holdings_never_match():
    replicas = [view("a", load=3, other={101, 102, 103}), view("b", load=1)]
    decision = choose(replicas, "t", PREFIXES)
    assert (decision.replica_id, decision.reason) == ("b", NONE)


def test_with_no_match_the_least_loaded_takes_it_and_ties_go_to_the_first_listed():
    assert choose([view("a", 2), view("b", 1), view("c", 1)], "t", PREFIXES) == \
        choose([view("b", 1), view("c", 1)], "t", PREFIXES)
    assert choose([view("a", 2), view("b", 1), view("c", 1)], "t", PREFIXES).replica_id == "b"
    assert choose([view("c", 1), view("b", 1)], "t", {}).replica_id == "c"


def test_equal_matches_go_to_the_less_loaded():
    replicas = [view("a", 5, t={103}), view("b", 2, t={103}), view("c", 0)]
    decision = choose(replicas, "t", PREFIXES)
    assert (decision.replica_id, decision.reason, decision.matched_tokens) == ("b", MATCH, 300)


def test_affinity_yields_to_load_only_past_both_thresholds():
    guard = LoadGuard(spread=4, ratio=1.5)
    # spread 5 > 4 and 6 > 1.5 * 1: imbalanced, the idlest takes it although it holds nothing
    decision = choose([view("a", 6, t={103}), view("b", 1)], "t", PREFIXES, guard)
    assert (decision.replica_id, decision.reason) == ("b", LOAD)
    # spread 4 is not more than 4: affinity
    assert choose([view("a", 5, t={103}), view("b", 1)], "t", PREFIXES, guard).reason == MATCH
    # spread 6 > 4 but 20 is not more than 1.5 * 14: affinity
    assert choose([view("a", 20, t={103}), view("b", 14)], "t", PREFIXES, guard).reason == MATCH


def test_the_default_guard_is_the_routers_of_vllm_and_sglang_scaled_down():
    guard = LoadGuard()
    assert not guard.imbalanced([16, 0]) and guard.imbalanced([17, 0])
    assert not guard.imbalanced([48, 32]) and guard.imbalanced([49, 32])


def test_a_target_is_chosen_as_it_is_and_a_dead_one_is_ignored():
    replicas = [view("a", 9), view("b", 0)]
    assert choose(replicas, "", {}, target="a") == choose(replicas, "", {}, target="a")
    assert choose(replicas, "", {}, target="a").reason == TARGET
    gone = choose(replicas, "", {}, target="z")
    assert (gone.replica_id, gone.reason) == ("b", NONE)


def test_no_replicas_no_decision():
    assert choose([], "t", PREFIXES) is None


def test_a_lone_replica_is_never_imbalanced():
    decision = choose([view("a", 500, t={101})], "t", PREFIXES, LoadGuard(spread=1))
    assert (decision.replica_id, decision.reason) == ("a", MATCH)


def test_longest_held_reads_only_the_tenant():
    replica = view("a", t={101, 103}, u={102})
    assert longest_held(replica, "t", PREFIXES) == 300
    assert longest_held(replica, "u", PREFIXES) == 128
    assert longest_held(replica, "v", PREFIXES) == 0


# ---- prefix_hashes ---------------------------------------------------------------------------


def test_a_prefix_is_named_alike_whatever_follows_it_and_whatever_else_is_named():
    tokens = list(range(1000, 1000 + 5 * CHUNK_TOKENS + 17))
    longer = [*tokens, 7, 8, 9]
    plain = prefix_hashes(tokens)
    assert sorted(plain) == [CHUNK_TOKENS * i for i in range(1, 6)]
    with_ends = prefix_hashes(longer, [10, 3 * CHUNK_TOKENS + 5, len(tokens)])
    for length, digest in plain.items():
        assert with_ends[length] == digest
    assert prefix_hashes(tokens, [3 * CHUNK_TOKENS + 5])[3 * CHUNK_TOKENS + 5] == \
        with_ends[3 * CHUNK_TOKENS + 5]
    assert prefix_hashes(tokens[:10], [10])[10] == with_ends[10]
    assert len(set(with_ends.values())) == len(with_ends)


def test_different_tokens_name_different_prefixes():
    tokens = list(range(3 * CHUNK_TOKENS))
    changed = [*tokens]
    changed[5] += 1  # in the first chunk: every later name changes (the chain)
    a, b = prefix_hashes(tokens), prefix_hashes(changed)
    assert all(a[n] != b[n] for n in a)


def test_lengths_past_the_end_or_zero_are_left_out():
    assert prefix_hashes([1, 2, 3], [0, 3, 4]).keys() == {3}
    assert prefix_hashes([]) == {}


def test_a_ticket_names_the_chunks_and_the_breakpoints_of_its_request():
    prompt = list(range(2 * CHUNK_TOKENS + 30))
    request = GenerationRequest(prompt, SamplingParams(), "tenant",
                                (CacheBreakpoint(CHUNK_TOKENS + 3, 300.0),))
    ticket = RouteTicket.for_request(request)
    assert ticket.tenant == "tenant"
    assert sorted(ticket.prefixes) == [CHUNK_TOKENS, CHUNK_TOKENS + 3, 2 * CHUNK_TOKENS]


# ---- HeldPrefixes ----------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_held_prefixes_expire_and_a_longer_hold_is_never_shortened():
    clock = Clock()
    held = HeldPrefixes(clock=clock)
    held.hold("t", [1, 2], 300.0)
    held.hold("t", [2, 3], 10.0)  # 2 stays held for 300 s
    held.hold("u", [9], 60.0)
    assert held.report() == {"t": [1, 2, 3], "u": [9]}
    clock.now += 30
    assert held.report() == {"t": [1, 2], "u": [9]}
    assert held.live("t") == {1, 2}
    clock.now += 60
    assert held.report() == {"t": [1, 2]}
    held.hold("t", [1], 1000.0)  # a hit refreshes
    clock.now += 250
    assert held.report() == {"t": [1]}


def test_held_prefixes_are_bounded_and_drop_the_soonest_to_expire():
    clock = Clock()
    held = HeldPrefixes(capacity=3, clock=clock)
    held.hold("t", [1], 100.0)
    held.hold("t", [2], 10.0)
    held.hold("u", [3], 50.0)
    held.hold("u", [4], 70.0)
    assert len(held) == 3
    assert held.report() == {"t": [1], "u": [3, 4]}


@pytest.mark.parametrize("order", [[3, 1, 2], [2, 3, 1]])
def test_the_same_holdings_give_the_same_report(order):
    held = HeldPrefixes(clock=Clock())
    for digest in order:
        held.hold("b", [digest], 100.0)
        held.hold("a", [digest], 100.0)
    assert list(held.report().items()) == [("a", [1, 2, 3]), ("b", [1, 2, 3])]


# ---- the preheat-replica header --------------------------------------------------------------


def test_the_header_names_the_replica_noted_while_answering_and_only_then():
    import asyncio

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from preheat.scale.served_by import ServedByHeader, note_replica

    async def served(request):
        note_replica("replica-7")
        return JSONResponse({"ok": True})

    async def streamed(request):
        await asyncio.create_task(asyncio.sleep(0, note_replica("replica-8")))

        async def body():
            yield b"data\n"
        return StreamingResponse(body())

    async def plain(request):
        return JSONResponse({})

    app = Starlette(routes=[Route("/served", served), Route("/streamed", streamed),
                            Route("/plain", plain)])
    app.add_middleware(ServedByHeader)
    note_replica("outside")  # no request: nothing to note, and no error
    with TestClient(app) as http:
        assert http.get("/served").headers["preheat-replica"] == "replica-7"
        assert http.get("/streamed").headers["preheat-replica"] == "replica-8"
        assert "preheat-replica" not in http.get("/plain").headers


# ---- what the engine side gives a relay ------------------------------------------------------


async def test_a_stream_groups_what_arrived_together_and_ends_with_finished_or_an_error():
    from preheat.engine import CacheUsage, EngineStoppedError, Finished, RequestStream, Started
    from preheat.engine.output import TextDelta

    stream = RequestStream("r", lambda _: None)
    usage = CacheUsage(3)
    stream.push(Started(usage))
    stream.push(TextDelta("a", 1))
    groups = []
    async for group in stream.steps():
        groups.append(group)
        if len(groups) == 1:
            stream.push(TextDelta("b", 1))
            stream.push(TextDelta("c", 1))
            stream.push(Finished("end_turn", None, usage, 3, [1, 2, 3], "abc"))
            stream.push(TextDelta("never", 1))
    assert [len(g) for g in groups] == [2, 3]
    assert isinstance(groups[-1][-1], Finished)

    failing = RequestStream("f", lambda _: None)
    failing.push(Started(usage))
    failing.push(EngineStoppedError("gone"))
    seen = []
    with pytest.raises(EngineStoppedError):
        async for group in failing.steps():
            seen.append(group)
    assert [type(e) for g in seen for e in g] == [Started]


def test_engine_stats_of_several_engines_add_up():
    from dataclasses import fields

    from preheat.engine import EngineStats
    a = EngineStats(*range(1, 19))
    b = EngineStats(*range(100, 118))
    total = EngineStats.total([a, b])
    for f in fields(EngineStats):
        expected = max if f.name == "block_size" else sum
        assert getattr(total, f.name) == expected([getattr(a, f.name), getattr(b, f.name)])
