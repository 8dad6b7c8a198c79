"""Breakpoint rules (limit, TTL order, automatic placement, minimum length) and usage arithmetic."""
from __future__ import annotations

import pytest

from preheat.engine.output import CacheUsage
from preheat.engine.request import CacheBreakpoint
from preheat.server.cache_policy import CachePolicy, Mark, requested_marks
from preheat.server.errors import InvalidRequestError
from preheat.server.prompt_builder import BuiltPrompt, PromptBlock
from preheat.server.protocol import CacheControl, MessagesRequest
from preheat.server.settings import ServerSettings

FIVE = CacheControl(type="ephemeral")
HOUR = CacheControl(type="ephemeral", ttl="1h")
POLICY = CachePolicy(min_tokens=100, ttl_5m_seconds=300.0, ttl_1h_seconds=3600.0)


def prompt_with(*blocks: tuple[int, CacheControl | None]) -> BuiltPrompt:
    return BuiltPrompt(text="", token_ids=[], tools_text="", tool_choice_text="", system_text="",
                       turns=[], prefill=False,
                       blocks=[PromptBlock("messages", end, cc) for end, cc in blocks])


def request(top_level: dict | None = None) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    if top_level:
        body["cache_control"] = top_level
    return MessagesRequest.model_validate(body)


def test_marks_follow_the_blocks_in_prompt_order():
    marks = requested_marks(request(), prompt_with((10, HOUR), (20, None), (30, FIVE)))
    assert marks == [Mark(10, "1h"), Mark(30, "5m")]


def test_top_level_cache_control_marks_the_last_block():
    prompt = prompt_with((10, None), (20, None), (30, None))
    assert requested_marks(request({"type": "ephemeral"}), prompt) == [Mark(30, "5m")]
    assert requested_marks(request({"type": "ephemeral", "ttl": "1h"}), prompt) == [Mark(30, "1h")]


def test_top_level_cache_control_on_an_already_marked_last_block_is_one_mark():
    prompt = prompt_with((10, None), (30, HOUR))
    assert requested_marks(request({"type": "ephemeral"}), prompt) == [Mark(30, "1h")]


def test_at_most_four_breakpoints():
    four = [(i * 10, FIVE) for i in range(1, 5)]
    assert len(requested_marks(request(), prompt_with(*four))) == 4
    with pytest.raises(InvalidRequestError, match="A maximum of 4 blocks with cache_control may be "
                                                  "provided. Found 5."):
        requested_marks(request(), prompt_with(*four, (50, FIVE)))


def test_the_automatic_breakpoint_counts_toward_the_four():
    four = [(i * 10, FIVE) for i in range(1, 5)]
    with pytest.raises(InvalidRequestError, match="Found 5"):
        requested_marks(request({"type": "ephemeral"}), prompt_with(*four, (50, None)))


def test_a_one_hour_breakpoint_may_not_follow_a_five_minute_one():
    with pytest.raises(InvalidRequestError, match="ttl='1h' cannot come after one with ttl='5m'"):
        requested_marks(request(), prompt_with((10, FIVE), (20, HOUR)))
    with pytest.raises(InvalidRequestError, match="ttl='1h' cannot come after"):
        requested_marks(request({"type": "ephemeral", "ttl": "1h"}), prompt_with((10, FIVE), (20, None)))


def test_engine_breakpoints_map_ttls_to_seconds():
    marks = [Mark(200, "1h"), Mark(400, "5m")]
    assert POLICY.to_engine(marks) == (CacheBreakpoint(200, 3600.0), CacheBreakpoint(400, 300.0))


def test_prefixes_shorter_than_the_minimum_are_not_cached():
    assert POLICY.to_engine([Mark(99, "5m"), Mark(100, "5m")]) == (CacheBreakpoint(100, 300.0),)


def test_minimum_zero_still_needs_a_token():
    policy = CachePolicy(min_tokens=0, ttl_5m_seconds=300.0, ttl_1h_seconds=3600.0)
    assert policy.to_engine([Mark(0, "5m"), Mark(1, "5m")]) == (CacheBreakpoint(1, 300.0),)


def test_two_marks_on_one_position_pin_once_with_the_first_ttl():
    assert POLICY.to_engine([Mark(200, "1h"), Mark(200, "5m")]) == (CacheBreakpoint(200, 3600.0),)


def test_ttl_overrides_come_from_settings():
    policy = CachePolicy.from_settings(ServerSettings(min_cache_tokens=0, ttl_5m_seconds=2,
                                                      ttl_1h_seconds=6))
    assert policy.to_engine([Mark(5, "1h"), Mark(9, "5m")]) == (CacheBreakpoint(5, 6), CacheBreakpoint(9, 2))


def test_usage_splits_writes_by_ttl_and_adds_up_to_the_prompt():
    cache = CacheUsage(prompt_tokens=1000, cache_read_tokens=100, cache_write_tokens=800,
                       cache_write_by_ttl={3600.0: 500, 300.0: 300})
    usage = POLICY.usage(cache, output_tokens=7)
    assert usage.cache_read_input_tokens == 100
    assert usage.cache_creation_input_tokens == 800
    assert usage.cache_creation.ephemeral_1h_input_tokens == 500
    assert usage.cache_creation.ephemeral_5m_input_tokens == 300
    assert usage.input_tokens == 100
    assert usage.output_tokens == 7
    total = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    assert total == 1000


def test_usage_without_caching_is_all_plain_input():
    usage = POLICY.usage(CacheUsage(prompt_tokens=42), output_tokens=0)
    assert usage.input_tokens == 42
    assert usage.cache_read_input_tokens == usage.cache_creation_input_tokens == 0
    assert usage.cache_creation.ephemeral_5m_input_tokens == 0
