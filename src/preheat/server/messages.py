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
from preheat.server.output_grammar import FREE_TEXT, OutputPlan, plan_output
from preheat.server.prompt_builder import BuiltPrompt, build_prompt, continue_prompt
from preheat.server.protocol import MessageResponse, MessagesRequest, PromptRequest
from preheat.server.reply_parser import (BlockEvent, BlockStart, BlockStop, JsonPiece,
                                         ReplyParser, TextPiece)
from preheat.server.sse import PING, sse_event
from preheat.server.thread_store import ThreadStore, ThreadTurn
from preheat.server.tool_format import HERMES, ToolCallForm

if TYPE_CHECKING:
    from preheat.engine.engine_client import EngineClient, RequestStream
    from preheat.server.request_record import RequestRecord

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
    output: OutputPlan
    tool_form: ToolCallForm
    generation: GenerationRequest
    continues: ThreadTurn | None = None  # the thread turn this request continues from
    record: RequestRecord | None = None  # metrics and access log (None: not an HTTP request)

    @property
    def is_prewarm(self) -> bool:
        """Writes its cache entries and generates nothing: no content block."""
        return self.body.max_tokens == 0

    def reply_parser(self) -> ReplyParser:
        return ReplyParser(tool_calls=self.output.tool_calls, form=self.tool_form)


class MessageService:
    """Validates, renders and runs message requests against the engine."""

    def __init__(self, engine: EngineClient, registry: ModelRegistry, policy: CachePolicy,
                 diagnostics: DiagnosticsStore, ping_interval: float,
                 tool_form: ToolCallForm = HERMES, threads: ThreadStore | None = None):
        self.engine = engine
        self.threads = threads or ThreadStore()
        self.registry = registry
        self.policy = policy
        self.diagnostics = diagnostics
        self.ping_interval = ping_interval
        self.tool_form = tool_form  # how the model writes tool calls

    async def build(self, body: PromptRequest, max_tokens: int | None = None) -> BuiltPrompt:
        """Resolve the model and render the prompt (off the event loop: long prompts take
        ms); one sure to be over ``max_tokens`` is a 400 before it is tokenized."""
        self.registry.resolve(body.model)
        return await asyncio.to_thread(build_prompt, body, self.engine.tokenizer, self.tool_form,
                                       max_tokens)

    async def count_tokens(self, body: PromptRequest) -> int:
        prompt = await self.build(body)
        self.policy.breakpoints(body, prompt)  # the same 400s as a real request
        await asyncio.to_thread(plan_output, body, self.tool_form)
        return len(prompt.token_ids)

    async def prepare(self, body: MessagesRequest, namespace: str, request_id: str,
                      record: RequestRecord | None = None) -> PreparedMessage:
        """Validate and render a request; a thread continue holds its turn until the
        request ends (``submit``, ``complete``, ``stream_events`` release it). ``record``
        (the HTTP request's) is told the caller and model, and watches the engine's events."""
        if record is not None:
            record.identify(namespace, body.model, self.registry.served(body.model), body.stream)
        if body.max_tokens > self.engine.context_window:
            raise InvalidRequestError(
                f"max_tokens: {body.max_tokens} > {self.engine.context_window}, which is the "
                f"maximum allowed number of output tokens for {body.model}")
        turn = self.threads.begin(body, namespace)
        try:
            return await self._prepare(body, namespace, request_id, turn, record)
        except BaseException:
            if turn is not None:
                self.threads.end_continue(turn, succeeded=False)
            raise

    async def _prepare(self, body: MessagesRequest, namespace: str, request_id: str,
                       turn: ThreadTurn | None, record: RequestRecord | None) -> PreparedMessage:
        if turn is None:
            prompt = await self.build(body, self.engine.context_window)
        else:
            body = body.model_copy(update={"system": turn.system, "tools": turn.tools,
                                           "messages": turn.messages + body.messages})
            self.registry.resolve(body.model)
            prompt = await asyncio.to_thread(continue_prompt, body, self.engine.tokenizer,
                                             self.tool_form, turn.token_ids, turn.blocks,
                                             self.engine.context_window)
        breakpoints = self.policy.breakpoints(body, prompt)
        output = await asyncio.to_thread(plan_output, body, self.tool_form)
        if body.max_tokens == 0:
            output = FREE_TEXT  # a pre-warm generates nothing to constrain
        if output.grammar is not None and prompt.prefill and (
                output.calls_only or not output.tool_calls):
            raise InvalidRequestError(
                "a final assistant message (prefill) cannot be combined with a forced "
                "tool_choice or output_config.format: the reply's shape is fixed from its start")
        params = SamplingParams(max_tokens=body.max_tokens, temperature=body.temperature,
                                top_k=body.top_k or 0, top_p=body.top_p or 1.0,
                                stop=tuple(body.stop_sequences), grammar=output.grammar,
                                distinct_segments=output.distinct_calls)
        message_id = new_message_id()
        generation = GenerationRequest(
            prompt.token_ids, params, namespace, breakpoints, message_id,
            hold_seconds=self.threads.ttl if body.thread is not None else 0.0)
        return PreparedMessage(message_id, request_id, namespace, self.registry.model_id, body,
                               prompt, output, self.tool_form, generation, turn, record)

    async def submit(self, prepared: PreparedMessage) -> RequestStream:
        """Hand the request to the engine; refusals (too long, overloaded) become API errors."""
        try:
            stream = await self.engine.submit(prepared.generation)
        except BaseException as err:
            self._end_thread(prepared, None, None)
            if isinstance(err, EngineError):
                raise from_engine_error(err) from None
            raise
        return stream if prepared.record is None else prepared.record.watch(stream)

    def _end_thread(self, prepared: PreparedMessage, message: MessageResponse | None,
                    finished: Finished | None) -> None:
        """A threaded request ended: store its response as the thread's next turn (when it
        succeeded) and release the turn it continued."""
        if prepared.continues is not None:
            self.threads.end_continue(prepared.continues, succeeded=message is not None)
        if message is None or prepared.body.thread is None:
            return
        reply_ids = list(finished.output_ids)
        while reply_ids and reply_ids[-1] in self.engine.tokenizer.eos_token_ids:
            reply_ids.pop()  # the template writes the end of the turn in the next prompt
        self.threads.record(prepared.message_id, prepared.namespace, prepared.body,
                            prepared.prompt, [b.model_dump() for b in message.content],
                            reply_ids)

    async def complete(self, prepared: PreparedMessage, stream: RequestStream,
                       is_disconnected: Callable[[], Awaitable[bool]]) -> MessageResponse | None:
        """Run to the end and return the Message; None if the client went away (aborted)."""
        loop = asyncio.get_running_loop()
        next_check = loop.time() + DISCONNECT_CHECK_SECONDS
        message: MessageResponse | None = None
        finished = False
        ended: tuple[MessageResponse | None, Finished | None] = (None, None)
        try:
            async for event in with_heartbeat(stream, DISCONNECT_CHECK_SECONDS):
                if loop.time() >= next_check:
                    if await is_disconnected():
                        return None
                    next_check = loop.time() + DISCONNECT_CHECK_SECONDS
                if isinstance(event, Started):
                    message = self.start_message(prepared, event)
                elif isinstance(event, Finished):
                    finished = True
                    parser = prepared.reply_parser()
                    parser.feed(event.text)
                    parser.finish()
                    final = self.final_message(prepared, message, event, parser)
                    ended = (final, event)
                    return final
        except EngineError as err:
            raise from_engine_error(err) from None
        finally:
            if not finished:
                stream.abort()
            self._end_thread(prepared, *ended)
        raise InternalError("the engine ended the request without finishing it")

    async def stream_events(self, prepared: PreparedMessage,
                            stream: RequestStream) -> AsyncIterator[bytes]:
        """SSE events in Anthropic's order; a failure after the start is an ``error`` event.

        The caller aborts ``stream`` when the client disconnects.
        """
        parser = prepared.reply_parser()
        message: MessageResponse | None = None
        ended: tuple[MessageResponse | None, Finished | None] = (None, None)
        try:
            async for event in with_heartbeat(stream, self.ping_interval):
                if event is None:
                    yield PING
                elif isinstance(event, Started):
                    message = self.start_message(prepared, event)
                    yield sse_event("message_start", {"type": "message_start",
                                                      "message": message.model_dump()})
                    if not prepared.is_prewarm:
                        for block_event in parser.begin():
                            yield _block_sse(block_event)
                elif isinstance(event, TextDelta):
                    for block_event in parser.feed(event.text):
                        yield _block_sse(block_event)
                elif isinstance(event, Finished):
                    closing = [] if prepared.is_prewarm else parser.finish()
                    # raises if aborted
                    final = self.final_message(prepared, message, event, parser)
                    for block_event in closing:
                        yield _block_sse(block_event)
                    yield sse_event("message_delta", {
                        "type": "message_delta",
                        "delta": {"stop_reason": final.stop_reason,
                                  "stop_sequence": final.stop_sequence},
                        "usage": final.usage.model_dump()})
                    yield sse_event("message_stop", {"type": "message_stop"})
                    ended = (final, event)  # the client has the whole reply
        except APIError as err:
            yield sse_event("error", err.body(prepared.request_id))
        except EngineError as err:
            yield sse_event("error", from_engine_error(err).body(prepared.request_id))
        except Exception:
            log.exception("stream of %s failed", prepared.message_id)
            error = InternalError("Internal server error")
            yield sse_event("error", error.body(prepared.request_id))
        finally:
            self._end_thread(prepared, *ended)

    def start_message(self, prepared: PreparedMessage, started: Started) -> MessageResponse:
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

    def final_message(self, prepared: PreparedMessage, message: MessageResponse | None,
                      finished: Finished, parser: ReplyParser) -> MessageResponse:
        """The whole message; ``parser`` has seen all of the reply's text."""
        if message is None or finished.stop_reason not in STOP_REASONS:
            raise InternalError("the engine aborted the request")
        stop_reason = STOP_REASONS[finished.stop_reason]
        if finished.stop_reason is StopReason.EOS and parser.has_tool_use:
            stop_reason = "tool_use"
        return MessageResponse.model_validate({
            **message.model_dump(),
            "content": [] if prepared.is_prewarm else parser.content(),
            "stop_reason": stop_reason,
            "stop_sequence": finished.stop_sequence,
            "usage": self.policy.usage(finished.usage, finished.output_tokens),
        })


def _block_sse(event: BlockEvent) -> bytes:
    if isinstance(event, BlockStart):
        return sse_event("content_block_start", {"type": "content_block_start",
                                                 "index": event.index,
                                                 "content_block": event.block})
    if isinstance(event, TextPiece):
        delta = {"type": "text_delta", "text": event.text}
    elif isinstance(event, JsonPiece):
        delta = {"type": "input_json_delta", "partial_json": event.partial_json}
    else:
        assert isinstance(event, BlockStop)
        return sse_event("content_block_stop", {"type": "content_block_stop",
                                                "index": event.index})
    return sse_event("content_block_delta", {"type": "content_block_delta",
                                             "index": event.index, "delta": delta})
