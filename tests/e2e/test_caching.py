"""Prompt caching through the 2.x SDK: exact usage, automatic caching, lookback, limits, tenants."""
from __future__ import annotations

import anthropic
import pytest
from e2e_helpers import ALIAS, MIN_CACHE_TOKENS, cached_system, document, total_input

QUESTION = [{"role": "user", "content": "Which license is this?"}]


def ask(client, **fields):
    fields.setdefault("model", ALIAS)
    fields.setdefault("max_tokens", 3)
    fields.setdefault("messages", QUESTION)
    return client.messages.create(**fields)


def count(client, **fields) -> int:
    fields.setdefault("model", ALIAS)
    fields.setdefault("messages", QUESTION)
    return client.messages.count_tokens(**fields).input_tokens


def test_usage_on_write_then_read(client):
    system = cached_system(document())
    first = ask(client, system=system)
    second = ask(client, system=system)
    prompt_tokens = count(client, system=system)

    written = first.usage.cache_creation_input_tokens
    assert written >= MIN_CACHE_TOKENS
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == written
    assert first.usage.cache_creation.ephemeral_1h_input_tokens == 0
    assert second.usage.cache_read_input_tokens == written
    assert second.usage.cache_creation_input_tokens == 0
    assert first.usage.input_tokens == second.usage.input_tokens == prompt_tokens - written
    assert total_input(first.usage) == total_input(second.usage) == prompt_tokens


def test_without_breakpoints_everything_is_plain_input(client):
    system = document()
    first, second = ask(client, system=system), ask(client, system=system)
    for usage in (first.usage, second.usage):
        assert usage.cache_read_input_tokens == usage.cache_creation_input_tokens == 0
        assert usage.input_tokens == count(client, system=system)


def test_prefixes_below_the_minimum_are_plain_input(client):
    system = cached_system("Answer in one word.")
    usage = ask(client, system=system).usage
    assert usage.cache_creation_input_tokens == usage.cache_read_input_tokens == 0
    assert usage.input_tokens == count(client, system=system)


def test_automatic_caching_moves_forward_with_the_conversation(client):
    system = document()
    turn1 = [{"role": "user", "content": "Who wrote this license?"}]
    first = ask(client, system=system, messages=turn1, cache_control={"type": "ephemeral"})
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation_input_tokens > MIN_CACHE_TOKENS
    # only the generation prompt after the last block is plain input
    assert 0 < first.usage.input_tokens < 10

    turn2 = turn1 + [{"role": "assistant", "content": "The Free Software Foundation."},
                     {"role": "user", "content": "When?"}]
    second = ask(client, system=system, messages=turn2, cache_control={"type": "ephemeral"})
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens > 0
    assert total_input(second.usage) == count(client, system=system, messages=turn2)


def test_a_moved_breakpoint_reads_the_entry_at_an_earlier_block_boundary(client):
    def user(text: str, cached: bool) -> dict:
        block = {"type": "text", "text": text}
        if cached:
            block["cache_control"] = {"type": "ephemeral"}
        return {"role": "user", "content": [block]}

    system = cached_system(document())
    first = ask(client, system=system, messages=[user("Summarise it.", True)])
    pinned = first.usage.cache_creation_input_tokens
    # the next turn marks only its last message: the earlier entry ends before that breakpoint
    later = [user("Summarise it.", False), {"role": "assistant", "content": "It is the GPL."},
             user("Is it a copyleft license?", True)]
    second = ask(client, system=[{"type": "text", "text": system[0]["text"]}], messages=later)
    assert second.usage.cache_read_input_tokens == pinned
    assert second.usage.cache_creation_input_tokens > 0


def test_one_hour_and_five_minute_writes_are_split(client):
    system = cached_system(document(), ttl="1h")
    messages = [{"role": "user", "content": [
        {"type": "text", "text": document(), "cache_control": {"type": "ephemeral", "ttl": "5m"}},
        {"type": "text", "text": "What changed between these?"}]}]
    usage = ask(client, system=system, messages=messages).usage
    one_hour = usage.cache_creation.ephemeral_1h_input_tokens
    five_minutes = usage.cache_creation.ephemeral_5m_input_tokens
    assert one_hour >= MIN_CACHE_TOKENS and five_minutes >= MIN_CACHE_TOKENS - 20
    assert one_hour + five_minutes == usage.cache_creation_input_tokens
    again = ask(client, system=system, messages=messages).usage
    assert again.cache_read_input_tokens == usage.cache_creation_input_tokens


def test_cache_control_on_a_tool_definition(client):
    tools = [{"name": "lookup", "description": document(), "input_schema": {"type": "object"},
              "cache_control": {"type": "ephemeral"}}]
    first = ask(client, tools=tools)
    second = ask(client, tools=tools)
    assert first.usage.cache_creation_input_tokens >= MIN_CACHE_TOKENS
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens


def test_prewarm_writes_the_cache_without_generating(client):
    system = cached_system(document())
    warm = ask(client, system=system, max_tokens=0)
    assert warm.content == [] and warm.stop_reason == "max_tokens"
    assert warm.usage.output_tokens == 0
    assert warm.usage.cache_creation_input_tokens >= MIN_CACHE_TOKENS
    used = ask(client, system=system)
    assert used.usage.cache_read_input_tokens == warm.usage.cache_creation_input_tokens


def test_tenants_never_share_entries(client, client_b):
    system = cached_system(document())
    a1 = ask(client, system=system)
    b1 = ask(client_b, system=system)
    a2 = ask(client, system=system)
    assert b1.usage.cache_read_input_tokens == 0
    assert b1.usage.cache_creation_input_tokens == a1.usage.cache_creation_input_tokens
    assert a2.usage.cache_read_input_tokens == a1.usage.cache_creation_input_tokens


def test_at_most_four_breakpoints(client):
    blocks = [{"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}}
              for i in range(5)]
    with pytest.raises(anthropic.BadRequestError) as info:
        ask(client, messages=[{"role": "user", "content": blocks}])
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "A maximum of 4 blocks with cache_control" in info.value.body["error"]["message"]
    # the automatic breakpoint on the last (unmarked) block is the fifth
    with pytest.raises(anthropic.BadRequestError, match="Found 5"):
        ask(client, messages=[{"role": "user", "content": blocks[:3] + [{"type": "text", "text": "end"}]}],
            cache_control={"type": "ephemeral"},
            tools=[{"name": "t", "input_schema": {"type": "object"},
                    "cache_control": {"type": "ephemeral"}}])


def test_a_one_hour_breakpoint_after_a_five_minute_one_is_rejected(client):
    with pytest.raises(anthropic.BadRequestError, match="ttl='1h' cannot come after"):
        ask(client, system=cached_system("sys", ttl="5m"), messages=[{"role": "user", "content": [
            {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}])


def test_count_tokens_validates_breakpoints_too(client):
    blocks = [{"type": "text", "text": f"p{i}", "cache_control": {"type": "ephemeral"}} for i in range(5)]
    with pytest.raises(anthropic.BadRequestError, match="A maximum of 4"):
        count(client, messages=[{"role": "user", "content": blocks}])
