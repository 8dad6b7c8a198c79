"""The thread store: continue once, one at a time, within a TTL and per-tenant caps."""
import pytest

from engine_driver import FakeClock
from preheat.server.errors import APIError
from preheat.server.held_history import HeldHistory
from preheat.server.thread_store import ThreadStore, ThreadTurn


def turn(message_id: str, namespace: str = "a", tokens: int = 10, at: float = 0.0) -> ThreadTurn:
    return ThreadTurn(message_id, namespace, HeldHistory([], [], [], list(range(tokens)), []), at)


def code_of(store: ThreadStore, namespace: str, message_id: str) -> tuple[int, str]:
    with pytest.raises(APIError) as info:
        store.begin_continue(namespace, message_id)
    return info.value.status, info.value.details["error_code"]


def test_a_turn_is_continued_once_and_never_twice_at_a_time():
    store = ThreadStore(clock=FakeClock())
    store.store(turn("m1"))
    held = store.begin_continue("a", "m1")
    assert code_of(store, "a", "m1") == (400, "thread_continue_in_flight")
    store.end_continue(held, succeeded=False)  # a failed continue leaves it continuable
    held = store.begin_continue("a", "m1")
    store.end_continue(held, succeeded=True)
    assert code_of(store, "a", "m1") == (400, "thread_already_continued")
    assert code_of(store, "b", "m1") == (404, "thread_not_found")  # another tenant's


def test_turns_expire_after_the_ttl_unless_in_flight():
    clock = FakeClock()
    store = ThreadStore(ttl=300, clock=clock)
    store.store(turn("m1", at=0.0))
    store.store(turn("m2", at=0.0))
    held = store.begin_continue("a", "m2")
    clock.now = 301
    assert code_of(store, "a", "m1") == (404, "thread_not_found")
    store.end_continue(held, succeeded=True)


def test_the_oldest_turns_go_first_past_the_caps():
    store = ThreadStore(max_turns=2, max_tokens=25, clock=FakeClock())
    for i in range(3):
        store.store(turn(f"m{i}", tokens=10))
    assert code_of(store, "a", "m0")[1] == "thread_not_found"
    store.begin_continue("a", "m2")
    store.store(turn("big", tokens=20))  # 10 + 10 + 20 > 25: m1 goes, then m2
    assert code_of(store, "a", "m1")[1] == "thread_not_found"
