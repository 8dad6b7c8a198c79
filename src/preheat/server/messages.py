"""``POST /v1/messages``: request -> engine request -> a Message or its SSE events.

The engine reports prompt accounting first (``Started``), then text, then
``Finished``; this module turns that into Anthropic's response shapes. It
never sees tensors: only token ids, breakpoints and events.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from preheat.engine.errors import EngineError
from preheat.engine.output import Finished, Started, StopReason, TextDelta
from preheat.engine.request import GenerationRequest, SamplingParams
from preheat.server.cache_policy import CachePolicy
from preheat.server.diagnostics import DiagnosticsStore, Fingerprint
from preheat.server.errors import APIError, InternalError, InvalidRequestError, from_engine_error
from preheat.server.heartbeat import with_heartbeat
from preheat.server.model_registry import ModelRegistry
from preheat.server.prompt_builder import BuiltPrompt, build_prompt
from preheat.server.protocol import MessageResponse, MessagesRequest, PromptRequest, TextContent
from preheat.server.sse import PING, sse_event

if TYPE_CHECKING:
    from preheat.engine.engine_client import EngineClient, RequestStream

log = logging.getLogger(__name__)

# How often a non-streaming request checks that its client is still there.
DISCONNECT_CHECK_SECONDS = 1.0

STOP_REASONS = {
    StopReason.EOS: "end_turn",
    StopReason.MAX_TOKENS: "max_tokens",
    StopReason.STOP_SEQUENCE: "stop_sequence",
    StopReason.CONTEXT_WINDOW: "model_context_window_exceeded",
}


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class PreparedMessage:
    """A validated request, ready for the engine."""

    message_id: str
    request_id: str
    namespace: str
    model: str  # the served model; responses echo ``body.model``
    body: MessagesRequest
    prompt: BuiltPrompt
    generation: GenerationRequest

    @property
    def is_prewarm(self) -> bool:
        """Writes its cache entries and generates nothing: no content block."""
        return self.body.max_tokens == 0


class MessageService:
    """Validates, renders and runs message requests against the engine."""

    def __init__(self, engine: EngineClient, registry: ModelRegistry, policy: CachePolicy,
                 diagnostics: DiagnosticsStore, ping_interval: float):
        self.engine = engine
        self.registry = registry
        self.policy = policy
        self.diagnostics = diagnostics
        self.ping_interval = ping_interval

    async def build(self, body: PromptRequest) -> BuiltPrompt:
        """Resolve the model and render the prompt (off the event loop: long prompts take ms)."""
        self.registry.resolve(body.model)
        return await asyncio.to_thread(build_prompt, body, self.engine.tokenizer)

    async def count_tokens(self, body: PromptRequest) -> int:
        prompt = await self.build(body)
        self.policy.breakpoints(body, prompt)  # the same 400s as a real request
        return len(prompt.token_ids)

    async def prepare(self, body: MessagesRequest, namespace: str,
                      request_id: str) -> PreparedMessage:
        if body.max_tokens > self.engine.context_window:
            raise InvalidRequestError(
                f"max_tokens: {body.max_tokens} > {self.engine.context_window}, which is the "
                f"maximum allowed number of output tokens for {body.model}")
        prompt = await self.build(body)
        params = SamplingParams(max_tokens=body.max_tokens, temperature=body.temperature,
                                top_k=body.top_k or 0, top_p=body.top_p or 1.0,
                                stop=tuple(body.stop_sequences))
        message_id = new_message_id()
        generation = GenerationRequest(prompt.token_ids, params, namespace,
                                       self.policy.breakpoints(body, prompt), message_id)
        return PreparedMessage(message_id, request_id, namespace, self.registry.model_id, body,
                               prompt, generation)

    async def submit(self, prepared: PreparedMessage) -> RequestStream:
        """Hand the request to the engine; refusals (too long, overloaded) become API errors."""
        try:
            return await self.engine.submit(prepared.generation)
        except EngineError as err:
            raise from_engine_error(err) from None

    async def complete(self, prepared: PreparedMessage, stream: RequestStream,
                       is_disconnected: Callable[[], Awaitable[bool]]) -> MessageResponse | None:
        """Run to the end and return the Message; None if the client went away (aborted)."""
        loop = asyncio.get_running_loop()
        next_check = loop.time() + DISCONNECT_CHECK_SECONDS
        message: MessageResponse | None = None
        finished = False
        try:
            async for event in with_heartbeat(stream, DISCONNECT_CHECK_SECONDS):
                if loop.time() >= next_check:
                    if await is_disconnected():
                        return None
                    next_check = loop.time() + DISCONNECT_CHECK_SECONDS
                if isinstance(event, Started):
                    message = self._start(prepared, event)
                elif isinstance(event, Finished):
                    finished = True
                    return self._final(prepared, message, event)
        except EngineError as err:
            raise from_engine_error(err) from None
        finally:
            if not finished:
                stream.abort()
        raise InternalError("the engine ended the request without finishing it")

    async def stream_events(self, prepared: PreparedMessage,
                            stream: RequestStream) -> AsyncIterator[bytes]:
        """SSE events in Anthropic's order; a failure after the start is an ``error`` event.

        The caller aborts ``stream`` when the client disconnects.
        """
        has_block = not prepared.is_prewarm
        message: MessageResponse | None = None
        try:
            async for event in with_heartbeat(stream, self.ping_interval):
                if event is None:
                    yield PING
                elif isinstance(event, Started):
                    message = self._start(prepared, event)
                    yield sse_event("message_start", {"type": "message_start",
                                                      "message": message.model_dump()})
                    if has_block:
                        yield sse_event("content_block_start", {
                            "type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}})
                elif isinstance(event, TextDelta):
                    yield sse_event("content_block_delta", {
                        "type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": event.text}})
                elif isinstance(event, Finished):
                    final = self._final(prepared, message, event)
                    if has_block:
                        yield sse_event("content_block_stop",
                                        {"type": "content_block_stop", "index": 0})
                    yield sse_event("message_delta", {
                        "type": "message_delta",
                        "delta": {"stop_reason": final.stop_reason,
                                  "stop_sequence": final.stop_sequence},
                        "usage": final.usage.model_dump()})
                    yield sse_event("message_stop", {"type": "message_stop"})
        except APIError as err:
            yield sse_event("error", err.body(prepared.request_id))
        except EngineError as err:
            yield sse_event("error", from_engine_error(err).body(prepared.request_id))
        except Exception:
            log.exception("stream of %s failed", prepared.message_id)
            error = InternalError("Internal server error")
            yield sse_event("error", error.body(prepared.request_id))

    def _start(self, prepared: PreparedMessage, started: Started) -> MessageResponse:
        """The message as known at the start (accounting, diagnostics); records its fingerprint."""
        fingerprint = Fingerprint.of(prepared.namespace, prepared.model, prepared.prompt,
                                     started.usage)
        asked = prepared.body.diagnostics
        diagnostics = None
        if asked is not None and asked.previous_message_id:
            reason = self.diagnostics.explain(asked.previous_message_id, fingerprint,
                                              started.usage.cache_read_tokens)
            diagnostics = {"cache_miss_reason": reason.to_dict()} if reason else None
        self.diagnostics.record(prepared.message_id, fingerprint)
        return MessageResponse(
            id=prepared.message_id, model=prepared.body.model, content=[], stop_reason=None,
            stop_sequence=None, usage=self.policy.usage(started.usage, 0), diagnostics=diagnostics)

    def _final(self, prepared: PreparedMessage, message: MessageResponse | None,
               finished: Finished) -> MessageResponse:
        if message is None or finished.stop_reason not in STOP_REASONS:
            raise InternalError("the engine aborted the request")
        return message.model_copy(update={
            "content": [] if prepared.is_prewarm else [TextContent(text=finished.text)],
            "stop_reason": STOP_REASONS[finished.stop_reason],
            "stop_sequence": finished.stop_sequence,
            "usage": self.policy.usage(finished.usage, finished.output_tokens),
        })
