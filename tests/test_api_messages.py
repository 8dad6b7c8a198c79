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
from preheat.server.messages import MessageService, PreparedMessage
from preheat.server.model_registry import ModelRegistry
from preheat.server.prompt_builder import build_prompt
from preheat.server.protocol import MessagesRequest
from preheat.tokenizer.tokenizer import Tokenizer

USAGE = CacheUsage(prompt_tokens=30, cache_read_tokens=0, cache_write_tokens=0)


class ScriptedStream:
    """Yields the given events, raising any exception among them."""

    def __init__(self, *events):
        self.events = events
        self.aborted = False

    async def __aiter__(self):
        for event in self.events:
            if isinstance(event, Exception):
                raise event
            yield event

    def abort(self) -> None:
        self.aborted = True


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(embedded_model_path())


def service() -> MessageService:
    return MessageService(engine=None, registry=ModelRegistry("smol", 8192),
                          policy=CachePolicy(1024, 300.0, 3600.0),
                          diagnostics=DiagnosticsStore(8), ping_interval=60)


def prepared(tokenizer, max_tokens: int = 8) -> PreparedMessage:
    body = MessagesRequest.model_validate({"model": "claude-x", "max_tokens": max_tokens,
                                           "messages": [{"role": "user", "content": "hi"}]})
    prompt = build_prompt(body, tokenizer)
    generation = GenerationRequest(prompt.token_ids, SamplingParams(max_tokens=max_tokens))
    return PreparedMessage("msg_1", "req_1", "ns", "smol", body, prompt, generation)


async def events_of(stream, prep) -> list[tuple[str, dict]]:
    out = []
    async for frame in service().stream_events(prep, stream):
        event, data = frame.decode().strip().split("\n")
        out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def finished(reason=StopReason.EOS, text="Hello!", output_tokens=3) -> Finished:
    return Finished(reason, None, USAGE, output_tokens, [], text)


async def test_event_sequence(tokenizer):
    stream = ScriptedStream(Started(USAGE), TextDelta("Hel", 1), TextDelta("lo!", 2), finished())
    events = await events_of(stream, prepared(tokenizer))
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
    events = await events_of(stream, prepared(tokenizer))
    assert [e for e, _ in events][-1] == "error"
    assert events[-1][1] == {"type": "error", "request_id": "req_1", "error": {
        "type": "api_error", "message": "internal error in the engine"}}


async def test_an_aborted_request_is_an_error_not_a_stop_reason(tokenizer):
    stream = ScriptedStream(Started(USAGE), finished(StopReason.ABORTED))
    events = await events_of(stream, prepared(tokenizer))
    assert events[-1][0] == "error"


async def test_context_window_stop_reason(tokenizer):
    stream = ScriptedStream(Started(USAGE), finished(StopReason.CONTEXT_WINDOW))
    message = await service().complete(prepared(tokenizer), stream, is_disconnected=_connected)
    assert message.stop_reason == "model_context_window_exceeded"
    assert message.content[0].text == "Hello!" and message.usage.output_tokens == 3
    assert not stream.aborted


async def test_prewarm_has_no_content(tokenizer):
    done = finished(StopReason.MAX_TOKENS, text="", output_tokens=0)
    stream = ScriptedStream(Started(USAGE), done)
    message = await service().complete(prepared(tokenizer, max_tokens=0), stream, _connected)
    assert message.content == [] and message.stop_reason == "max_tokens"


async def _connected() -> bool:
    return False
