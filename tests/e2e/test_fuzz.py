"""A request fuzzer against a real ``preheat serve``: mutated Messages, count_tokens and
OpenAI requests, several in flight at once beside a valid request.

Every answer must be a 2xx or a well-formed 4xx in its API's shape, never a 5xx or a hang;
the valid request beside the bad ones must give exactly the tokens it gives alone; and the
server must end idle and serving. ``PREHEAT_FUZZ_EXAMPLES`` sets how many batches run (CI
runs a fixed, derandomized set; a local run draws new ones each time).
"""
from __future__ import annotations

import asyncio
import copy
import json
import os
from typing import Any

import httpx
import pytest
from e2e_helpers import ALIAS, KEY_A, MAIN_SERVER_ARGS, Server, start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("PREHEAT_FUZZ_EXAMPLES", "150"))
TIMEOUT_S = 120.0  # a request that takes longer counts as a hang
DEEP = "\u2063deep\u2063"  # where a deeply nested value goes

WEATHER = {"name": "get_weather", "description": "Weather in a city", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
BASES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/messages", {"model": ALIAS, "max_tokens": 4, "temperature": 0,
                      "messages": [{"role": "user", "content": "Hi there"}]}),
    ("/v1/messages", {"model": ALIAS, "max_tokens": 4, "stream": True, "top_k": 5, "top_p": 0.9,
                      "system": [{"type": "text", "text": "Be brief.",
                                  "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
                      "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]},
                                   {"role": "assistant", "content": "Hi"},
                                   {"role": "user", "content": "Weather?"}]}),
    ("/v1/messages", {"model": ALIAS, "max_tokens": 6, "tools": [WEATHER],
                      "tool_choice": {"type": "any"},
                      "messages": [{"role": "user", "content": "Weather in Oslo?"},
                                   {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                                                      "name": "get_weather",
                                                                      "input": {"city": "Oslo"}}]},
                                   {"role": "user", "content": [{"type": "tool_result",
                                                                 "tool_use_id": "toolu_1",
                                                                 "content": "Sunny"}]}]}),
    ("/v1/messages", {"model": ALIAS, "max_tokens": 6, "messages": [{"role": "user", "content": "A city?"}],
                      "output_config": {"format": {"type": "json_schema", "schema": {
                          "type": "object", "properties": {"name": {"type": "string"}},
                          "required": ["name"]}}}}),
    ("/v1/messages/count_tokens", {"model": ALIAS, "tools": [WEATHER],
                                   "messages": [{"role": "user", "content": "Count me"}]}),
    ("/v1/chat/completions", {"model": ALIAS, "max_tokens": 4, "temperature": 0,
                              "messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Hi"}]}),
    ("/v1/chat/completions", {"model": ALIAS, "max_completion_tokens": 6, "stream": True,
                              "stream_options": {"include_usage": True},
                              "tools": [{"type": "function", "function": {
                                  "name": "get_weather", "parameters": WEATHER["input_schema"]}}],
                              "messages": [{"role": "user", "content": "Weather in Rome?"}]}),
    ("/v1/responses", {"model": ALIAS, "max_output_tokens": 4, "temperature": 0,
                       "instructions": "Be brief.", "input": "Hi"}),
    ("/v1/responses", {"model": ALIAS, "max_output_tokens": 6, "stream": True, "store": False,
                       "tools": [{"type": "function", "name": "get_weather",
                                  "parameters": WEATHER["input_schema"], "strict": False}],
                       "text": {"format": {"type": "text"}},
                       "input": [{"role": "user", "content": [{"type": "input_text",
                                                               "text": "Weather in Rome?"}]},
                                 {"type": "function_call", "call_id": "call_1",
                                  "name": "get_weather", "arguments": '{"city": "Rome"}'},
                                 {"type": "function_call_output", "call_id": "call_1",
                                  "output": "Sunny"}]}),
]
CANARY = {"model": ALIAS, "max_tokens": 12, "temperature": 0,
          "messages": [{"role": "user", "content": "Name a colour."}]}

ODD_TEXT = st.sampled_from([
    "", " ", "\x00", "\ud800", "a\udfffb", "\U0001F600", "e\u0301", "\u202e", "\ufeff", "\n" * 50,
    "<|im_end|>", "<tool_call>\n", "\\u0000", "x" * 20_000, "日本語のテキスト"])
ODD_NUMBER = st.sampled_from([
    0, -1, 1, 2**31, 2**63, 10**30, -(10**30), 1e308, -1e308, 5e-324, 5.929382446550025e-208,
    1e-45, 0.5, 2.0000001, -0.0, 1.5, True, False])
SCHEMA_KEYWORDS = st.sampled_from([
    ("type", "string"), ("type", "integer"), ("type", "number"), ("type", ["string", "null"]),
    ("type", "array"), ("type", "object"), ("type", "stringy"), ("enum", ["a", 1, None]),
    ("const", "x"), ("minimum", 5), ("maximum", -5), ("exclusiveMinimum", 0), ("multipleOf", 0.001),
    ("minLength", 3), ("maxLength", 1), ("pattern", "^[a-z]+$"), ("pattern", "("),
    ("format", "email"), ("format", "date-time"), ("format", "nope"), ("items", {"type": "integer"}),
    ("minItems", 2), ("maxItems", 0), ("uniqueItems", True), ("properties", {"a": {"type": "boolean"}}),
    ("required", ["a", "b"]), ("additionalProperties", False), ("additionalProperties", {"type": "string"}),
    ("patternProperties", {"^x": {}}), ("anyOf", [{"type": "string"}, {"type": "integer"}]),
    ("oneOf", [{"type": "string"}, {"type": "integer"}]), ("allOf", [{"minimum": 1}, {"maximum": 2}]),
    ("not", {"type": "string"}), ("$ref", "#/$defs/a"), ("$defs", {"a": {"type": "string"}}),
    ("$ref", "#/nowhere"), ("if", {"type": "string"}), ("then", {"minLength": 1}),
    ("dependentRequired", {"a": ["b"]}), ("prefixItems", [{"type": "string"}]), ("contains", {}),
    ("propertyNames", {"maxLength": 2}), ("minProperties", 1), ("title", 5), ("default", [1])])

LEAF = (st.none() | st.booleans() | ODD_NUMBER | st.integers() | ODD_TEXT
        | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
VALUE = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8) | ODD_TEXT, inner, max_size=3), max_leaves=8)


def paths(node: Any, at: tuple = ()) -> list[tuple]:
    """Every path into a JSON value (dict keys and list indexes), the root excluded."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((*at, key))
        found += paths(child, (*at, key))
    return found


def parent_of(body: Any, path: tuple) -> Any:
    for key in path[:-1]:
        body = body[key]
    return body


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    """A base request with 1-3 mutations, as the raw bytes sent."""
    path, base = draw(st.sampled_from(BASES))
    body = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "set", "delete", "extra", "nest", "schema", "raw"]))
        where = draw(st.sampled_from(paths(body) or [("model",)]))
        holder = parent_of(body, where) if where[:-1] else body
        try:
            if kind == "set":
                holder[where[-1]] = draw(VALUE)
            elif kind == "delete":
                del holder[where[-1]]
            elif kind == "extra" and isinstance(holder, dict):
                holder[draw(st.text(min_size=1, max_size=10))] = draw(VALUE)
            elif kind == "nest":  # spliced in as text below: too deep for json.dumps
                depth = draw(st.integers(10, 5000))
                holder[where[-1]] = DEEP
                deep = ("[" * depth + "1" + "]" * depth if draw(st.booleans())
                        else '{"a": ' * depth + "1" + "}" * depth)
                return path, json.dumps(body).replace(json.dumps(DEEP), deep, 1).encode()
            elif kind == "schema":
                schema = copy.deepcopy(dict(draw(st.lists(SCHEMA_KEYWORDS, min_size=1, max_size=5))))
                target = body.setdefault("tools", [copy.deepcopy(WEATHER)]) if "/chat/" not in path else None
                if target and isinstance(target, list) and isinstance(target[0], dict):
                    target[0]["input_schema"] = {"type": "object", "properties": {"x": schema}}
                else:
                    body["response_format"] = {"type": "json_schema", "json_schema": {
                        "name": "r", "schema": {"type": "object", "properties": {"x": schema}}}}
            elif kind == "raw":
                return path, draw(st.sampled_from([
                    b"", b"{", b"[]", b"null", b'{"model": NaN}', b'{"a": 1e999999}', b"\xff\xfe",
                    json.dumps(body).encode()[:-1], b'{"model": "x"}' * 2, b"[" * 10_000]))
        except (KeyError, IndexError, TypeError):
            pass
    return path, json.dumps(body).encode()


def speaks_openai(path: str) -> bool:
    return path.startswith(("/v1/chat/", "/v1/responses"))


def well_formed_error(path: str, response: httpx.Response) -> None:
    body = response.json()
    if speaks_openai(path):
        error = body["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str)
        assert set(error) == {"message", "type", "param", "code"}
    else:
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def checked_sse(path: str, text: str) -> None:
    """A streamed 200: complete, in its API's order, with no error inside."""
    if path.startswith("/v1/chat/"):
        data = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
        assert data and data[-1] == "[DONE]", text[-500:]
        assert not any('"error"' in d[:20] for d in data), text[-500:]
        return
    if path.startswith("/v1/responses"):
        kinds = [json.loads(line.removeprefix("data: "))["type"] for line in text.splitlines()
                 if line.startswith("data: ")]
        assert kinds and kinds[0] == "response.created", text[-500:]
        assert kinds[-1] in ("response.completed", "response.incomplete"), text[-500:]
        return
    events = [line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event: ")]
    events = [e for e in events if e != "ping"]
    assert events and events[0] == "message_start" and events[-1] == "message_stop", events
    assert "error" not in events, text[-500:]


async def send(client: httpx.AsyncClient, path: str, raw: bytes) -> httpx.Response:
    return await client.post(path, content=raw, headers={"content-type": "application/json",
                                                          "anthropic-version": "2023-06-01"})


async def one_batch(server: Server, batch: list[tuple[str, bytes]], canary_text: str) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT_S,
                                 headers={"x-api-key": KEY_A, "authorization": f"Bearer {KEY_A}"}) as client:
        canary = asyncio.create_task(send(client, "/v1/messages", json.dumps(CANARY).encode()))
        answers = await asyncio.gather(*(send(client, p, raw) for p, raw in batch))
        for (path, raw), response in zip(batch, answers, strict=True):
            where = f"{path} {raw[:300]!r} -> {response.status_code} {response.text[:300]}"
            assert response.status_code < 500, where
            if response.status_code >= 400:
                well_formed_error(path, response)
            elif "text/event-stream" in response.headers.get("content-type", ""):
                checked_sse(path, response.text)
            else:
                assert isinstance(response.json(), dict), where
        reply = await canary
        assert reply.status_code == 200, reply.text
        assert reply.json()["content"][0]["text"] == canary_text  # undisturbed: the solo tokens


@pytest.fixture(scope="module")
def fuzz_server(server_logs):
    srv = start_server(server_logs, "fuzz", MAIN_SERVER_ARGS)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def canary_text(fuzz_server) -> str:
    reply = httpx.post(f"{fuzz_server.base_url}/v1/messages", json=CANARY, timeout=TIMEOUT_S,
                       headers={"x-api-key": KEY_A})
    assert reply.status_code == 200
    return reply.json()["content"][0]["text"]


def test_mutated_requests_get_2xx_or_well_formed_4xx_and_never_disturb_a_valid_one(fuzz_server, canary_text):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=bool(os.environ.get("CI")),
              suppress_health_check=list(HealthCheck), database=None)
    @given(st.lists(mutated(), min_size=1, max_size=4))
    def batch_of_bad_requests(batch):
        asyncio.run(one_batch(fuzz_server, batch, canary_text))

    batch_of_bad_requests()
    health = fuzz_server.health()
    assert health["status"] == "ok" and health["running"] == 0 and health["waiting"] == 0
    assert health["failed"] == 0  # no request failed inside the engine either
