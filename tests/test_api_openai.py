"""The OpenAI-compatible endpoint: request translation, the chunk sequence, errors, models.

The engine is replaced by scripted event streams: what the real engine does with the
translated request is covered end to end in tests/e2e/test_openai.py.
"""
from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from preheat.engine.errors import EngineError, EngineOverloadedError
from preheat.engine.output import CacheUsage, Finished, Started, StopReason, TextDelta
from preheat.loader.embedded import embedded_model_path
from preheat.server.app import create_app
from preheat.server.openai_chat import to_messages_request
from preheat.server.openai_errors import ParamError
from preheat.server.openai_protocol import parse_chat_request
from preheat.server.prompt_builder import build_prompt
from preheat.server.protocol import MessagesRequest
from preheat.server.settings import ServerSettings
from preheat.tokenizer.tokenizer import Tokenizer
from scripted_stream import ScriptedStream

KEY = "test-key"
CONTEXT_WINDOW = 2048
USAGE = CacheUsage(prompt_tokens=300, cache_read_tokens=256, cache_write_tokens=32)
WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "Weather in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
ASK = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(embedded_model_path())


class ScriptedEngine:
    """Answers every request with the same events (or refuses it with an exception)."""

    model_id = "smol"
    context_window = CONTEXT_WINDOW
    restarting, restarts = False, 0

    def __init__(self, tokenizer: Tokenizer, *events, refusal: Exception | None = None):
        self.tokenizer = tokenizer
        self.events = events
        self.refusal = refusal
        self.submitted = []

    async def submit(self, request):
        self.submitted.append(request)
        if self.refusal is not None:
            raise self.refusal
        return ScriptedStream(*self.events)


def finished(text: str, reason: StopReason = StopReason.EOS, output_tokens: int = 5) -> Finished:
    return Finished(reason, None, USAGE, output_tokens, [], text)


def client_for(engine: ScriptedEngine) -> TestClient:
    app = create_app(engine, ServerSettings(api_keys=(KEY,), aliases=("gpt-4o",),
                                            min_cache_tokens=0))
    return TestClient(app, headers={"authorization": f"Bearer {KEY}"})


def post(engine: ScriptedEngine, **body):
    with client_for(engine) as client:
        return client.post("/v1/chat/completions",
                           json={"model": "gpt-4o", "messages": ASK, **body})


def chunks_of(response) -> list:
    """The ``data:`` payloads of an SSE body, ``[DONE]`` as the string itself."""
    frames = [f for f in response.text.split("\n\n") if f and not f.startswith(":")]
    assert all(f.startswith("data: ") for f in frames)
    return [f[6:] if f == "data: [DONE]" else json.loads(f[6:]) for f in frames]


def translate(**body) -> MessagesRequest:
    raw = json.dumps({"model": "gpt-4o", "messages": ASK, **body}).encode()
    return to_messages_request(parse_chat_request(raw), CONTEXT_WINDOW)


# ---- translation ------------------------------------------------------------------


def test_an_image_part_is_an_image_block_so_the_image_policy_decides():
    request = translate(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA==", "detail": "low"}}]}])
    text, image = request.messages[0].content
    assert (text.type, image.type, image.source.url) == ("text", "image",
                                                         "data:image/png;base64,AA==")


HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
    {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo"},
                                 {"type": "text", "text": "and Bergen?"}]},
    {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "weather", "arguments": '{"city": "Bergen"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "7 degrees"}]},
]
ANTHROPIC_HISTORY = {
    "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo"},
                                     {"type": "text", "text": "and Bergen?"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Bergen"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "4 degrees"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "7 degrees"}]}],
    "tools": [{"name": "weather", "description": "Weather in a city",
               "input_schema": WEATHER["function"]["parameters"]}],
}


def test_a_tool_conversation_renders_as_the_messages_api_renders_it(tokenizer):
    translated = translate(messages=HISTORY, tools=[WEATHER])
    native = MessagesRequest.model_validate({"model": "gpt-4o", "max_tokens": 100,
                                             **ANTHROPIC_HISTORY})
    assert build_prompt(translated, tokenizer).text == build_prompt(native, tokenizer).text
    assert [m.role for m in translated.messages] == ["user", "assistant", "user", "user"]
    assert translated.messages[1].content[1].input == {"city": "Bergen"}


def test_sampling_fields_and_the_default_output_limit():
    request = translate(temperature=0.2, top_p=0.9, stop="END")
    assert (request.temperature, request.top_p, request.stop_sequences) == (0.2, 0.9, ["END"])
    assert request.max_tokens == CONTEXT_WINDOW  # no limit: the context window ends the reply
    assert translate(max_tokens=7).max_tokens == 7
    assert translate(max_tokens=7, max_completion_tokens=9).max_tokens == 9


def test_tool_choice_mapping():
    def choice(**body):
        tool_choice = translate(tools=[WEATHER], **body).tool_choice
        return tool_choice and tool_choice.model_dump(exclude_none=True)

    assert choice() == {"type": "auto"}
    assert choice(tool_choice="required") == {"type": "any"}
    assert choice(tool_choice="none") == {"type": "none"}
    assert choice(tool_choice={"type": "function", "function": {"name": "weather"}}) == {
        "type": "tool", "name": "weather"}
    assert choice(tool_choice="auto", parallel_tool_calls=False) == {
        "type": "auto", "disable_parallel_tool_use": True}


def test_response_formats_become_output_schemas():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert translate(response_format={"type": "json_schema", "json_schema": {
        "name": "reply", "schema": schema, "strict": True}}).output_config.format == {
        "type": "json_schema", "schema": schema}
    assert translate(response_format={"type": "json_object"}).output_config.format == {
        "type": "json_schema", "schema": {"type": "object"}}
    assert translate(response_format={"type": "text"}).output_config is None


def test_the_prompt_and_its_preamble_are_cached_automatically_for_5m():
    system = [{"role": "system", "content": "Be brief."}, *ASK]
    request = translate(messages=system, tools=[WEATHER])
    assert request.cache_control.ttl == "5m"  # the end of the prompt
    assert request.system[-1].cache_control.ttl == "5m"  # the end of tools and system
    assert request.tools[-1].cache_control is None
    assert translate(tools=[WEATHER]).tools[-1].cache_control.ttl == "5m"  # no system
    assert translate(prompt_cache_options={"ttl": "30m"}).cache_control.ttl == "1h"
    explicit = translate(messages=system, prompt_cache_options={"mode": "explicit"})
    assert explicit.cache_control is None and explicit.system[-1].cache_control is None


def test_explicit_breakpoints_keep_the_latest_and_longer_ttls_first():
    def part(text: str, ttl: str | None = None) -> dict:
        mark = {"mode": "explicit", **({"ttl": ttl} if ttl else {})}
        return {"type": "text", "text": text, "prompt_cache_breakpoint": mark}

    messages = [{"role": "system", "content": [part("one"), part("two")]},
                {"role": "user", "content": [part("three"), part("four", "30m"), part("five")]}]
    request = translate(messages=messages)
    marks = [b.cache_control and b.cache_control.ttl
             for b in [*request.system, *request.messages[0].content]]
    # the latest two explicit ones, beside the automatic ones (the preamble, the end, which
    # is "five"); a 5m mark may not precede a 1h one
    assert marks == [None, "1h", None, "1h", "5m"]
    assert request.cache_control.ttl == "5m"
    explicit = translate(messages=messages, prompt_cache_options={"mode": "explicit"})
    assert [b.cache_control is not None for b in [
        *explicit.system, *explicit.messages[0].content]] == [False, True, True, True, True]


def test_a_final_assistant_message_is_continued_without_trailing_whitespace():
    request = translate(messages=[*ASK, {"role": "assistant", "content": "It is "}])
    assert request.messages[-1].content[0].text == "It is"


@pytest.mark.parametrize("body, param", [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"bogus": 1}, "bogus"),
    ({"temperature": 3}, "temperature"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]},
     "messages.0.content.0"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages.0"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": [*ASK, {"role": "system", "content": "late"}]}, "messages.1.role"),
    ({"messages": [{"role": "user", "content": " "}]}, "messages.0.content"),
    ({"messages": [{"role": "system", "content": "alone"}]}, "messages"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "weather", "arguments": "[1]"}}]}]},
     "messages.1.tool_calls.0.function.arguments"),
    ({"max_completion_tokens": CONTEXT_WINDOW + 1}, "max_completion_tokens"),
])
def test_invalid_requests_name_the_openai_param(body, param):
    with pytest.raises(ParamError) as info:
        translate(**body)
    assert info.value.param == param and info.value.status == 400
    assert info.value.message.startswith(param)


# ---- responses over HTTP ----------------------------------------------------------


def test_a_completion(tokenizer):
    engine = ScriptedEngine(tokenizer, Started(USAGE), TextDelta("Hel", 1), finished("Hello!"))
    response = post(engine, temperature=1.5, seed=7, max_tokens=20)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "gpt-4o" and isinstance(body["created"], int)
    assert body["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Hello!", "refusal": None, "tool_calls": None}}]
    assert body["usage"] == {
        "prompt_tokens": 300, "completion_tokens": 5, "total_tokens": 305,
        "prompt_tokens_details": {"cached_tokens": 256, "cache_write_tokens": 32},
        "completion_tokens_details": {"reasoning_tokens": 0}}
    assert response.headers["x-request-id"].startswith("req_")
    params = engine.submitted[0].params
    assert (params.temperature, params.seed, params.max_tokens) == (1.5, 7, 20)
    assert engine.submitted[0].breakpoints  # the automatic breakpoint reached the engine


def test_finish_reasons(tokenizer):
    cases = {StopReason.MAX_TOKENS: "length", StopReason.STOP_SEQUENCE: "stop",
             StopReason.CONTEXT_WINDOW: "length"}
    for reason, expected in cases.items():
        engine = ScriptedEngine(tokenizer, Started(USAGE), finished("Hi", reason))
        assert post(engine).json()["choices"][0]["finish_reason"] == expected


def test_a_forced_call_is_a_tool_call_with_json_arguments(tokenizer):
    text = CALL + "\n" + CALL.replace("Oslo", "Bergen")
    engine = ScriptedEngine(tokenizer, Started(USAGE), finished(text))
    choice = post(engine, tools=[WEATHER], tool_choice="required").json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in calls] == [("function", "weather", {"city": "Oslo"}),
                                ("function", "weather", {"city": "Bergen"})]
    assert all(c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]


def test_the_chunk_sequence_with_usage(tokenizer):
    engine = ScriptedEngine(tokenizer, Started(USAGE), TextDelta("Hel", 1), TextDelta("lo!", 2),
                            finished("Hello!"))
    response = post(engine, stream=True, stream_options={"include_usage": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = chunks_of(response)
    assert chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo!"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, None, "stop"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 305
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 256


def test_streamed_tool_calls_come_in_pieces(tokenizer):
    pieces = ["Let me check. ", CALL[:14], CALL[14:40], CALL[40:]]
    engine = ScriptedEngine(tokenizer, Started(USAGE),
                            *[TextDelta(p, i) for i, p in enumerate(pieces)],
                            finished("".join(pieces)))
    chunks = chunks_of(post(engine, stream=True, tools=[WEATHER]))
    assert chunks[-1] == "[DONE]" and "usage" not in chunks[0]
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert "".join(d.get("content") or "" for d in deltas) == "Let me check."
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("call_")
    assert calls[0]["type"] == "function" and calls[0]["function"] == {
        "name": "weather", "arguments": ""}
    assert all(set(c) == {"index", "function"} for c in calls[1:])
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Oslo"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_failure_mid_stream_is_an_error_chunk(tokenizer):
    engine = ScriptedEngine(tokenizer, Started(USAGE), TextDelta("Hel", 1),
                            EngineError("internal error in the engine"))
    chunks = chunks_of(post(engine, stream=True))
    assert chunks[-1] == {"error": {"message": "internal error in the engine",
                                    "type": "server_error", "param": None, "code": None}}


# ---- errors -----------------------------------------------------------------------


def test_errors_are_in_openai_shape_on_chat_and_anthropic_shape_elsewhere(tokenizer):
    with client_for(ScriptedEngine(tokenizer)) as client:
        openai = client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": ASK,
                                                            "n": 3})
        anthropic = client.post("/v1/messages", json={"model": "gpt-4o", "messages": ASK})
    assert openai.status_code == 400 and set(openai.json()) == {"error"}
    assert openai.json()["error"] == {"message": "n: only 1 choice per request is supported",
                                      "type": "invalid_request_error", "param": "n",
                                      "code": "unsupported_parameter"}
    assert anthropic.status_code == 400 and anthropic.json()["type"] == "error"
    assert anthropic.json()["error"]["type"] == "invalid_request_error"


def test_key_model_path_and_schema_errors(tokenizer):
    bad_schema = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "strng"}}}}}
    with client_for(ScriptedEngine(tokenizer)) as client:
        wrong_key = client.post("/v1/chat/completions", headers={"authorization": "Bearer no"},
                                json={"model": "gpt-4o", "messages": ASK})
        no_model = client.post("/v1/chat/completions", json={"model": "gpt-5", "messages": ASK})
        no_path = client.post("/v1/chat/nothing", json={})
        schema = client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": ASK,
                                                           "tools": [bad_schema]})
    assert wrong_key.status_code == 401
    assert wrong_key.json()["error"] == {"message": "invalid API key", "param": None,
                                         "type": "invalid_request_error",
                                         "code": "invalid_api_key"}
    assert no_model.status_code == 404
    assert (no_model.json()["error"]["code"], no_model.json()["error"]["param"]) == (
        "model_not_found", "model")
    assert no_path.status_code == 404 and no_path.json()["error"]["type"] == "invalid_request_error"
    assert schema.status_code == 400
    assert schema.json()["error"]["message"].startswith(
        "tools.0.function.parameters.properties.x.type: invalid JSON schema")


def test_overload_is_a_503_the_sdk_retries(tokenizer):
    engine = ScriptedEngine(tokenizer, refusal=EngineOverloadedError("too many requests"))
    response = post(engine)
    assert response.status_code == 503 and response.headers["retry-after"]
    assert response.json()["error"]["type"] == "server_error"


def test_a_prompt_longer_than_the_context_window(tokenizer):
    response = post(ScriptedEngine(tokenizer), messages=[
        {"role": "user", "content": "word " * CONTEXT_WINDOW}])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


# ---- models -----------------------------------------------------------------------


def test_models_carry_both_sdks_fields(tokenizer):
    with client_for(ScriptedEngine(tokenizer)) as client:
        page = client.get("/v1/models").json()
        one = client.get("/v1/models/gpt-4o").json()
    assert page["object"] == "list" and [m["id"] for m in page["data"]] == ["smol", "gpt-4o"]
    assert page["has_more"] is False and page["first_id"] == "smol"
    assert one["object"] == "model" and one["type"] == "model" and one["owned_by"]
    assert isinstance(one["created"], int) and one["display_name"] == "gpt-4o (served by smol)"


@pytest.mark.parametrize("raw, status, where", [
    (b'{"model": "gpt-4o", "messages": [{"role": []}]}', 400, "messages.0"),
    (b'{"model": "gpt-4o", "messages": [{"role": {"a": 1}}]}', 400, "messages.0"),
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": []}]}]}', 400,
     "messages.0.content.0"),
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi \\ud800"}]}', 400,
     "messages.0.content"),
    # a lone surrogate inside the arguments' own JSON text, and one in the body's string
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant",'
     b' "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments":'
     b' "{\\"city\\": \\"\\\\ud800\\"}"}}]}, {"role": "tool", "tool_call_id": "c", "content": "x"}]}',
     400, "messages.1.tool_calls.0.function.arguments"),
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant",'
     b' "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments":'
     b' "{\\"city\\": \\"\\ud800\\"}"}}]}, {"role": "tool", "tool_call_id": "c", "content": "x"}]}',
     400, "messages.1.tool_calls.0.function.arguments"),
    # a whole pair is one character, and fine
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi \\ud83d\\ude00"}]}', 200, None),
])
def test_odd_values_are_400s_in_openai_shape_never_500s(tokenizer, raw, status, where):
    with client_for(ScriptedEngine(tokenizer, Started(USAGE), finished("ok"))) as client:
        response = client.post("/v1/chat/completions", content=raw,
                               headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    if where is not None:
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"].startswith(where)


def test_a_lone_surrogate_in_a_messages_request_is_a_400(tokenizer):
    raw = (b'{"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "a"},'
           b' {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f",'
           b' "input": {"city": "\\udc00"}}]}]}')
    with client_for(ScriptedEngine(tokenizer)) as client:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            response = client.post(path, content=raw, headers={"content-type": "application/json"})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["message"].startswith("messages.1.content.0.input.city")


@pytest.mark.parametrize("method, path", [("GET", "/health/"), ("POST", "/v1/messages/"),
                                          ("POST", "/v1/chat/completions/"), ("GET", "/v1/models/")])
def test_trailing_slashes_are_404s_not_redirects(tokenizer, method, path):
    with client_for(ScriptedEngine(tokenizer)) as client:
        response = client.request(method, path, json={}, follow_redirects=False)
    assert response.status_code == 404
    body = response.json()
    assert body["error"]["type"] in ("not_found_error", "invalid_request_error")
