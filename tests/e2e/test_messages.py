"""POST /v1/messages through the 2.x SDK: the Message shape, stop reasons, prefill, tools."""
from __future__ import annotations

import pytest
from e2e_helpers import ALIAS, CONTEXT_WINDOW, GREEDY, cached_system, document, total_input

HELLO = [{"role": "user", "content": "Say hello."}]


def test_message_shape_and_request_id(client):
    raw = client.messages.with_raw_response.create(model=ALIAS, max_tokens=5, messages=HELLO)
    message = raw.parse()
    assert raw.headers["request-id"].startswith("req_")
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", ALIAS)
    assert [block.type for block in message.content] == ["text"]
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 5
    assert message.usage.cache_creation.ephemeral_5m_input_tokens == 0


def test_claude_model_ids_are_served_and_echoed(client):
    message = client.messages.create(model="claude-e2e-model", max_tokens=2, messages=HELLO)
    assert message.model == "claude-e2e-model"


def test_max_tokens_stop_reason(client):
    message = client.messages.create(model=ALIAS, max_tokens=3, messages=[
        {"role": "user", "content": "Write a long poem about the sea."}], extra_body=GREEDY)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


def test_stop_sequences(client):
    messages = [{"role": "user", "content": "Write a long poem about the sea."}]
    free = client.messages.create(model=ALIAS, max_tokens=12, messages=messages, extra_body=GREEDY)
    text = free.content[0].text
    stop = text.split()[2]
    stopped = client.messages.create(model=ALIAS, max_tokens=12, messages=messages,
                                     stop_sequences=[stop], extra_body=GREEDY)
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert stopped.content[0].text == text[:text.index(stop)]


def test_a_final_assistant_message_is_continued(client):
    messages = [{"role": "user", "content": "Count from one to ten in words."},
                {"role": "assistant", "content": "One, two, three,"}]
    message = client.messages.create(model=ALIAS, max_tokens=6, messages=messages, extra_body=GREEDY)
    assert not message.content[0].text.startswith("One, two")
    assert "four" in message.content[0].text.lower()


@pytest.mark.parametrize("max_tokens", [500, 64000])  # 64000: Claude Code's, past the window
def test_generation_stops_at_the_context_window(client, max_tokens):
    messages = [{"role": "user", "content": "Keep counting."},
                {"role": "assistant", "content": "1, 2, 3, 4,"}]
    base = client.messages.count_tokens(model=ALIAS, messages=messages).input_tokens
    # " count" is one token: leave room for only a few output tokens
    messages[0]["content"] += " count" * (CONTEXT_WINDOW - 6 - base)
    prompt_tokens = client.messages.count_tokens(model=ALIAS, messages=messages).input_tokens
    assert CONTEXT_WINDOW - 12 < prompt_tokens < CONTEXT_WINDOW
    message = client.messages.create(model=ALIAS, max_tokens=max_tokens, messages=messages,
                                     extra_body=GREEDY)
    assert message.stop_reason == "model_context_window_exceeded"
    assert prompt_tokens + message.usage.output_tokens == CONTEXT_WINDOW


def test_greedy_output_is_identical_with_and_without_a_cache_hit(client):
    system = cached_system(document())
    messages = [{"role": "user", "content": "Describe this text in one sentence."}]
    cold = client.messages.create(model=ALIAS, max_tokens=24, system=system, messages=messages,
                                  extra_body=GREEDY)
    warm = client.messages.create(model=ALIAS, max_tokens=24, system=system, messages=messages,
                                  extra_body=GREEDY)
    assert cold.usage.cache_read_input_tokens == 0 and warm.usage.cache_read_input_tokens > 0
    assert warm.content[0].text == cold.content[0].text
    uncached = client.messages.create(model=ALIAS, max_tokens=24, messages=messages,
                                      system=system[0]["text"], extra_body=GREEDY)
    assert uncached.content[0].text == cold.content[0].text


def test_count_tokens_is_the_usage_sum(client):
    fields = dict(model=ALIAS, system="Be brief.", messages=[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a color."}])
    counted = client.messages.count_tokens(**fields).input_tokens
    message = client.messages.create(max_tokens=2, **fields)
    assert total_input(message.usage) == counted


def test_tools_and_tool_history_are_accepted(client):
    tools = [{"name": "get_weather", "description": "Current weather for a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "4 °C, rain"}]},
    ]
    message = client.messages.create(model=ALIAS, max_tokens=4, tools=tools, messages=messages,
                                     tool_choice={"type": "auto"})
    assert message.content[0].type == "text"
    assert message.usage.input_tokens == client.messages.count_tokens(
        model=ALIAS, tools=tools, messages=messages, tool_choice={"type": "auto"}).input_tokens


def test_round_tripping_a_response_as_history(client):
    first = client.messages.create(model=ALIAS, max_tokens=4, messages=HELLO)
    second = client.messages.create(model=ALIAS, max_tokens=2, messages=[
        *HELLO, {"role": "assistant", "content": first.content}, {"role": "user", "content": "Again."}])
    assert second.content[0].type == "text"
