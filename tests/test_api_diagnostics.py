"""Cache diagnostics: the first part of the prompt that diverged from the previous request."""
from __future__ import annotations

from dataclasses import replace

from preheat.engine.output import CacheUsage
from preheat.server.diagnostics import CacheMissReason, DiagnosticsStore, Fingerprint
from preheat.server.prompt_builder import BuiltPrompt, ChatTurn


def prompt(system="sys", tools="", tool_choice="", turns=(("user", "hi"),), prefill=False) -> BuiltPrompt:
    return BuiltPrompt(text="", token_ids=[], blocks=[], tools_text=tools, tool_choice_text=tool_choice,
                       system_text=system, turns=[ChatTurn(r, c) for r, c in turns], prefill=prefill)


def fingerprint(p: BuiltPrompt, *, namespace="ns", model="m", read=0, write=0) -> Fingerprint:
    usage = CacheUsage(prompt_tokens=read + write + 10, cache_read_tokens=read, cache_write_tokens=write)
    return Fingerprint.of(namespace, model, p, usage)


def store_with(previous: Fingerprint) -> DiagnosticsStore:
    store = DiagnosticsStore(capacity=8)
    store.record("msg_prev", previous)
    return store


def test_appended_turns_are_no_divergence():
    store = store_with(fingerprint(prompt(), write=500))
    later = fingerprint(prompt(turns=(("user", "hi"), ("assistant", "hello"), ("user", "more"))), read=500)
    assert store.explain("msg_prev", later, cache_read_tokens=500) is None


def test_unknown_previous_message():
    store = DiagnosticsStore(capacity=8)
    reason = store.explain("msg_nope", fingerprint(prompt()), 0)
    assert reason == CacheMissReason("previous_message_not_found")


def test_another_tenants_message_is_not_found():
    store = store_with(fingerprint(prompt(), namespace="tenant-a", write=500))
    reason = store.explain("msg_prev", fingerprint(prompt(), namespace="tenant-b"), 0)
    assert reason.to_dict() == {"type": "previous_message_not_found"}


def test_changes_are_reported_in_prompt_order_with_the_missed_tokens():
    previous = fingerprint(prompt(), write=500)
    store = store_with(previous)
    cases = {
        "model_changed": fingerprint(prompt(), model="other"),
        "tools_changed": fingerprint(prompt(tools="a tool", system="other")),
        "system_changed": fingerprint(prompt(system="other", turns=(("user", "bye"),))),
        "messages_changed": fingerprint(prompt(turns=(("user", "bye"),))),
    }
    for kind, current in cases.items():
        reason = store.explain("msg_prev", current, cache_read_tokens=0)
        assert reason.to_dict() == {"type": kind, "cache_missed_input_tokens": 500}


def test_missed_tokens_discount_what_was_still_read():
    store = store_with(fingerprint(prompt(turns=(("user", "a"), ("assistant", "b"), ("user", "c"))),
                                   read=300, write=200))
    current = fingerprint(prompt(turns=(("user", "a"), ("assistant", "B"), ("user", "c"))))
    reason = store.explain("msg_prev", current, cache_read_tokens=300)
    assert reason == CacheMissReason("messages_changed", 200)


def test_a_changed_tool_choice_is_unavailable():
    store = store_with(fingerprint(prompt(tools="t", tool_choice="")))
    current = fingerprint(prompt(tools="t", tool_choice="You must use one of these tools."))
    assert store.explain("msg_prev", current, 0).to_dict() == {"type": "unavailable"}


def test_a_prefill_may_grow_into_the_full_reply():
    previous = fingerprint(prompt(turns=(("user", "hi"), ("assistant", "The")), prefill=True))
    store = store_with(previous)
    current = fingerprint(prompt(turns=(("user", "hi"), ("assistant", "The answer"), ("user", "ok"))))
    assert store.explain("msg_prev", current, 0) is None


def test_the_store_keeps_only_the_most_recent():
    store = DiagnosticsStore(capacity=2)
    base = fingerprint(prompt())
    for i in range(3):
        store.record(f"msg_{i}", replace(base, cached_tokens=i))
    assert store.explain("msg_0", base, 0).type == "previous_message_not_found"
    assert store.explain("msg_1", base, 0) is None
    assert store.explain("msg_2", base, 0) is None


# ---- context edits ---------------------------------------------------------------


def edited(turns, sent, edits=("clear_tool_uses_20250919",), read=0, write=0) -> Fingerprint:
    usage = CacheUsage(prompt_tokens=read + write + 10, cache_read_tokens=read,
                       cache_write_tokens=write)
    return Fingerprint.of("ns", "m", prompt(turns=turns), usage, tuple(sent), tuple(edits))


TURNS = (("user", "go"), ("assistant", "call 1"), ("user", "result 1"))


def test_a_miss_an_edit_made_names_the_edit():
    store = store_with(edited(TURNS, sent=("u", "a1", "r1"), edits=(), write=300))
    # the client appended a turn; the edit cleared result 1 in this request's prompt
    current = edited((("user", "go"), ("assistant", "call 1"), ("user", "[cleared]"),
                      ("assistant", "call 2"), ("user", "result 2")),
                     sent=("u", "a1", "r1", "a2", "r2"))
    assert store.explain("msg_prev", current, cache_read_tokens=40).to_dict() == {
        "type": "messages_changed", "cache_missed_input_tokens": 260,
        "context_edits": ["clear_tool_uses_20250919"]}


def test_an_edit_of_the_previous_request_counts_too_and_is_named_once():
    store = store_with(edited(TURNS, sent=("u", "a1", "r1"),
                              edits=("clear_thinking_20251015", "clear_tool_uses_20250919")))
    current = edited((("user", "other"),), sent=("u", "a1", "r1", "a2"))
    assert store.explain("msg_prev", current, 0).context_edits == (
        "clear_thinking_20251015", "clear_tool_uses_20250919")


def test_a_client_that_changed_its_own_messages_is_told_so_without_edits():
    store = store_with(edited(TURNS, sent=("u", "a1", "r1")))
    current = edited((("user", "changed"),), sent=("u-changed", "a1", "r1", "a2"))
    reason = store.explain("msg_prev", current, 0)
    assert reason.type == "messages_changed" and reason.context_edits == ()
    assert "context_edits" not in reason.to_dict()
