"""Engine events -> Anthropic's SSE sequence and Message, including a failure mid-stream.

The engine is replaced by scripted event streams here: the real engine's path
is covered end to end in tests/e2e.
"""
from __future__ import annotations

import json

import pytest

from preheat.engine.errors import EngineError
from preheat.engine.output import CacheUsage, Finished, Started, StopReason, TextDelta
from preheat.engine.request import GenerationRequest, SamplingParams
from preheat.loader.embedded import embedded_model_path
from preheat.server.cache_policy import CachePolicy
from preheat.server.diagnostics import DiagnosticsStore
from preheat.server.message_sse import message_sse
from preheat.server.messages import MessageService, PreparedMessage
from preheat.server.model_registry import ModelRegistry
from preheat.server.output_grammar import plan_output
from preheat.server.tool_format import HERMES
from preheat.server.prompt_builder import build_prompt
from preheat.server.protocol import MessageResponse, MessagesRequest
from preheat.server.whole_reply import whole_reply
from preheat.tokenizer.tokenizer import Tokenizer
from scripted_stream import ScriptedEngine, ScriptedStream

USAGE = CacheUsage(prompt_tokens=30, cache_read_tokens=0, cache_write_tokens=0)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(embedded_model_path())


def service(stream: ScriptedStream) -> MessageService:
    return MessageService(engine=ScriptedEngine(stream), registry=ModelRegistry("smol", 8192),
                          policy=CachePolicy(1024, 300.0, 3600.0),
                          diagnostics=DiagnosticsStore(8), ping_interval=60)


def prepared(tokenizer, max_tokens: int = 8, **fields) -> PreparedMessage:
    body = MessagesRequest.model_validate({"model": "claude-x", "max_tokens": max_tokens,
                                           "messages": [{"role": "user", "content": "hi"}],
                                           **fields})
    prompt = build_prompt(body, tokenizer)
    output = plan_output(body)
    generation = GenerationRequest(prompt.token_ids, SamplingParams(max_tokens=max_tokens,
                                                                    grammar=output.grammar))
    return PreparedMessage("msg_1", "req_1", "ns", "smol", body, prompt, output, HERMES,
                           generation)


async def events_of(stream, prep) -> list[tuple[str, dict]]:
    out = []
    async for frame in message_sse(await service(stream).run(prep), prep.request_id):
        event, data = frame.decode().strip().split("\n")
        out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


async def whole(stream, prep) -> MessageResponse | None:
    closed = await whole_reply(await service(stream).run(prep), _connected)
    return None if closed is None else closed.message


def finished(reason=StopReason.EOS, text="Hello!", output_tokens=3) -> Finished:
    return Finished(reason, None, USAGE, output_tokens, [], text)


async def test_event_sequence(tokenizer):
    stream = ScriptedStream(Started(USAGE), TextDelta("Hel", 1), TextDelta("lo!", 2), finished())
    events = await events_of(stream, prepared(tokenizer, stream=True))
    assert [e for e, _ in events] == ["message_start", "content_block_start", "content_block_delta",
                                      "content_block_delta", "content_block_stop", "message_delta",
                                      "message_stop"]
    assert events[0][1]["message"]["model"] == "claude-x"
    assert events[0][1]["message"]["usage"]["input_tokens"] == 30
    assert events[5][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[5][1]["usage"]["output_tokens"] == 3


async def test_a_failure_after_the_start_is_an_error_event(tokenizer):
    failure = EngineError("internal error in the engine")
    stream = ScriptedStream(Started(USAGE), TextDelta("Hel", 1), failure)
    events = await events_of(stream, prepared(tokenizer, stream=True))
    assert [e for e, _ in events][-1] == "error"
    assert events[-1][1] == {"type": "error", "request_id": "req_1", "error": {
        "type": "api_error", "message": "internal error in the engine"}}


async def test_an_aborted_request_is_an_error_not_a_stop_reason(tokenizer):
    stream = ScriptedStream(Started(USAGE), finished(StopReason.ABORTED))
    events = await events_of(stream, prepared(tokenizer, stream=True))
    assert events[-1][0] == "error"


async def test_context_window_stop_reason(tokenizer):
    stream = ScriptedStream(Started(USAGE), finished(StopReason.CONTEXT_WINDOW))
    message = await whole(stream, prepared(tokenizer))
    assert message.stop_reason == "model_context_window_exceeded"
    assert message.content[0].text == "Hello!" and message.usage.output_tokens == 3
    assert not stream.aborted


async def test_prewarm_has_no_content(tokenizer):
    done = finished(StopReason.MAX_TOKENS, text="", output_tokens=0)
    stream = ScriptedStream(Started(USAGE), done)
    message = await whole(stream, prepared(tokenizer, max_tokens=0))
    assert message.content == [] and message.stop_reason == "max_tokens"


WEATHER = {"name": "weather", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL = '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


async def test_a_call_streams_as_a_tool_use_block_after_the_text(tokenizer):
    pieces = ["Let me ", "check. ", CALL[:14], CALL[14:40], CALL[40:]]
    stream = ScriptedStream(Started(USAGE), *[TextDelta(p, i) for i, p in enumerate(pieces)],
                            finished(text="".join(pieces)))
    events = await events_of(stream, prepared(tokenizer, stream=True, tools=[WEATHER]))
    names = [e for e, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    text = "".join(d["delta"]["text"] for e, d in events if d.get("index") == 0
                   and e == "content_block_delta")
    assert text == "Let me check."  # the space before the call is dropped
    start = next(d for e, d in events if e == "content_block_start" and d["index"] == 1)
    block = start["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "weather" and block["input"] == {}
    assert block["id"].startswith("toolu_")
    arguments = "".join(d["delta"]["partial_json"] for e, d in events
                        if e == "content_block_delta" and d["index"] == 1)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta",
                          "message_stop"]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_a_forced_call_is_the_whole_message(tokenizer):
    text = CALL + "\n" + CALL.replace("Oslo", "Bergen")
    stream = ScriptedStream(Started(USAGE), finished(text=text))
    message = await whole(stream, prepared(tokenizer, tools=[WEATHER], tool_choice={"type": "any"}))
    assert message.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in message.content] == [
        ("tool_use", "weather", {"city": "Oslo"}), ("tool_use", "weather", {"city": "Bergen"})]
    assert message.content[0].id != message.content[1].id


async def test_a_call_cut_off_by_max_tokens_keeps_what_it_got(tokenizer):
    cut = CALL[:CALL.index("Oslo") + 5]  # the arguments' closing brace is missing
    stream = ScriptedStream(Started(USAGE), finished(StopReason.MAX_TOKENS, text=cut))
    message = await whole(stream, prepared(tokenizer, tools=[WEATHER], tool_choice={"type": "any"}))
    assert message.stop_reason == "max_tokens"
    assert [(b.type, b.input) for b in message.content] == [("tool_use", {"city": "Oslo"})]


async def _connected() -> bool:
    return False


@pytest.mark.parametrize("fields, default, expected", [
    ({}, 0.0, 0.0), ({}, 1.0, 1.0), ({"temperature": 0.7}, 0.0, 0.7), ({"temperature": 1.0}, 0.0, 1.0)])
async def test_a_request_without_a_temperature_gets_the_servers_default(tokenizer, fields, default,
                                                                          expected):
    svc = MessageService(engine=ScriptedEngine(ScriptedStream(), tokenizer),
                         registry=ModelRegistry("smol", 8192), policy=CachePolicy(1024, 300.0, 3600.0),
                         diagnostics=DiagnosticsStore(8), ping_interval=60,
                         default_temperature=default)
    body = MessagesRequest.model_validate({"model": "smol", "max_tokens": 4,
                                           "messages": [{"role": "user", "content": "hi"}], **fields})
    prepared = await svc.prepare(body, "ns", "req")
    assert prepared.generation.params.temperature == expected
