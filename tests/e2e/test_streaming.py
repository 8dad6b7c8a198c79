"""Streaming: SSE event order on the wire, SDK iteration and helpers (sync and async), disconnects."""
from __future__ import annotations

import json
import time

import anthropic
from e2e_helpers import ALIAS, GREEDY, cached_system, document, total_input

POEM = [{"role": "user", "content": "Write a poem about autumn."}]


def sse_events(response) -> list[tuple[str, dict]]:
    """(event, data) pairs, checking every frame is ``event:`` then ``data:``."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: "):])
            assert data["type"] == name
            events.append((name, data))
        else:
            assert line == ""
    return events


def test_wire_format_and_event_order(http):
    body = {"model": ALIAS, "max_tokens": 6, "stream": True, "messages": POEM,
            "system": cached_system(document())}
    with http.stream("POST", "/v1/messages", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["request-id"].startswith("req_")
        events = [(name, data) for name, data in sse_events(response) if name != "ping"]
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}

    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["model"] == ALIAS
    assert start["usage"]["cache_creation_input_tokens"] > 0
    assert events[1][1] == {"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}}
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert all(d["type"] == "text_delta" for d in deltas)
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"]["output_tokens"] == 6
    assert delta["usage"]["input_tokens"] == start["usage"]["input_tokens"]


def test_prewarm_stream_has_no_content_block(http):
    body = {"model": ALIAS, "max_tokens": 0, "stream": True, "messages": POEM,
            "system": cached_system(document())}
    with http.stream("POST", "/v1/messages", json=body) as response:
        names = [name for name, _ in sse_events(response) if name != "ping"]
    assert names == ["message_start", "message_delta", "message_stop"]


def test_sdk_event_iteration(client):
    stream = client.messages.create(model=ALIAS, max_tokens=5, messages=POEM, stream=True)
    types = [event.type for event in stream]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert types.count("content_block_delta") >= 1


def test_stream_helpers(client):
    system = cached_system(document())
    with client.messages.stream(model=ALIAS, max_tokens=8, messages=POEM, system=system,
                                extra_body=GREEDY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
        text = stream.get_final_text()
    assert "".join(pieces) == text == final.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 8
    written = final.usage.cache_creation_input_tokens
    assert written > 0
    with client.messages.stream(model=ALIAS, max_tokens=8, messages=POEM, system=system,
                                extra_body=GREEDY) as stream:
        again = stream.get_final_message()
    assert again.usage.cache_read_input_tokens == written
    assert again.content[0].text == text
    assert total_input(again.usage) == total_input(final.usage)


async def test_async_stream_helpers(async_client):
    async with async_client.messages.stream(model=ALIAS, max_tokens=6, messages=POEM,
                                            extra_body=GREEDY) as stream:
        pieces = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
        text = await stream.get_final_text()
    assert "".join(pieces) == text == final.content[0].text
    events = await async_client.messages.create(model=ALIAS, max_tokens=6, messages=POEM, stream=True,
                                                extra_body=GREEDY)
    streamed = "".join([e.delta.text async for e in events if e.type == "content_block_delta"])
    assert streamed == text


async def test_async_create(async_client):
    message = await async_client.messages.create(model=ALIAS, max_tokens=3, messages=POEM)
    assert message.content[0].type == "text"


def test_client_disconnect_mid_stream_frees_the_request(server, http, client):
    aborted_before = server.health()["aborted"]
    # a long greedy reply: it is still running when the client hangs up after its first words
    # (without drafts, which write a count sixteen numbers a step)
    body = {"model": ALIAS, "max_tokens": 900, "stream": True, "temperature": 0, "speculative": False,
            "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]}
    with http.stream("POST", "/v1/messages", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("event: content_block_delta"):
                break
    deadline = time.monotonic() + 60
    while server.health()["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    health = server.health()
    assert health["running"] == 0
    assert health["aborted"] == aborted_before + 1  # stopped by the hang-up, not by finishing
    assert client.messages.create(model=ALIAS, max_tokens=2, messages=POEM).content


def test_errors_before_the_stream_starts_are_plain_http_errors(client):
    try:
        client.messages.create(model="gpt-4o", max_tokens=5, messages=POEM, stream=True)
    except anthropic.NotFoundError as err:
        assert err.body["error"]["type"] == "not_found_error"
    else:
        raise AssertionError("expected a 404")
