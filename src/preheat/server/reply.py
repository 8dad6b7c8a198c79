"""The one reply pipeline: an admitted request's engine events -> ``ReplyEvent``s.

Every API renders the same ``Reply``: the Anthropic SSE writer (``message_sse.py``), the
whole Message (``whole_reply.py``), OpenAI's chunks (``openai_chat.py``) and its legacy
text completions (``openai_completions.py``). The reply
owns what they must not each get right on their own: the heartbeat, the prompt
accounting and cache diagnostics of its start, parsing text into blocks, the stop
reason, mapping every failure to an ``APIError``, aborting the engine's work when the
consumer stops early, and ending the message thread's turn.
"""
from __future__ import annotations

import logging
from contextlib import aclosing
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from preheat.engine import EngineError, Finished, Started, StopReason, TextDelta, TokenLogprob
from preheat.server.diagnostics import DiagnosticsStore, Fingerprint
from preheat.server.errors import APIError, InternalError, from_engine_error
from preheat.server.heartbeat import with_heartbeat
from preheat.server.protocol import MessageResponse
from preheat.server.reply_events import Closed, Opened, Ping, ReplyEvent, TokenLogprobs
from preheat.server.reply_parser import ReplyParser
from preheat.server.thinking_parser import ThinkingReplyParser

if TYPE_CHECKING:
    from preheat.engine import RequestStream
    from preheat.server.cache_policy import CachePolicy
    from preheat.server.messages import PreparedMessage

log = logging.getLogger(__name__)

STOP_REASONS = {
    StopReason.EOS: "end_turn",
    StopReason.MAX_TOKENS: "max_tokens",
    StopReason.STOP_SEQUENCE: "stop_sequence",
    StopReason.CONTEXT_WINDOW: "model_context_window_exceeded",
}

# How a reply ended, for its thread: the message delivered (None: it failed or was
# abandoned) and the engine's last event (None: there was none).
EndHook = Callable[[MessageResponse | None, Finished | None], None]


class Reply:
    """One admitted request's reply; iterate it once. ``close`` ends it early.

    ``Opened`` comes first, then block events, ``Ping`` after every ``heartbeat`` seconds
    without engine output, then ``Closed``; any failure is raised as an ``APIError``. A
    streamed request's blocks are parsed as its text arrives, so they go out at once; a
    whole one's text is parsed once, at the end.
    """

    def __init__(self, prepared: PreparedMessage, stream: RequestStream, heartbeat: float,
                 policy: CachePolicy, diagnostics: DiagnosticsStore, on_end: EndHook):
        self.prepared = prepared
        self._stream = stream
        self._heartbeat = heartbeat
        self._policy = policy
        self._diagnostics = diagnostics
        self._on_end = on_end
        self._finished: Finished | None = None
        self._delivered: MessageResponse | None = None
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[ReplyEvent]:
        try:
            async with aclosing(self._events()) as events:
                async for event in events:
                    yield event
        except APIError:
            raise
        except EngineError as err:
            raise from_engine_error(err) from None
        except Exception as err:
            log.exception("reply %s failed", self.prepared.message_id)
            raise InternalError("Internal server error") from err
        finally:
            self.close()

    def close(self) -> None:
        """End the reply (idempotent): the engine stops working on it unless it finished,
        and the thread turn it continued is released (stored, if it was delivered).

        Runs when iteration ends however it ends; a response that never iterated it (its
        client left first) calls it too."""
        if self._closed:
            return
        self._closed = True
        if self._finished is None:
            self._stream.abort()
        self._on_end(self._delivered, self._finished)

    async def _events(self) -> AsyncIterator[ReplyEvent]:
        prepared = self.prepared
        parser = prepared.reply_parser()
        streamed = prepared.body.stream and not prepared.is_prewarm
        opened: MessageResponse | None = None
        logprobs: list[TokenLogprob] = []  # every token's so far, for a request that asks
        async with aclosing(with_heartbeat(self._stream, self._heartbeat)) as events:
            async for event in events:
                if event is None:
                    yield Ping()
                elif isinstance(event, Started):
                    opened = self._opened(event)
                    yield Opened(opened)
                    if streamed:  # a plain reply's text block opens before its first token
                        for block in parser.begin():
                            yield block
                elif isinstance(event, TextDelta):
                    logprobs += event.logprobs
                    if streamed and event.logprobs:
                        yield TokenLogprobs(event.logprobs)
                    for block in parser.feed(event.text) if streamed else ():
                        yield block
                elif isinstance(event, Finished):
                    self._finished = event
                    logprobs += event.logprobs
                    closing = [] if prepared.is_prewarm else [
                        *(() if streamed else parser.feed(event.text)), *parser.finish()]
                    final = self._final(opened, event, parser)  # raises if aborted
                    if streamed and event.logprobs:
                        yield TokenLogprobs(event.logprobs)
                    for block in closing:
                        yield block
                    yield Closed(final, event, tuple(logprobs))
                    self._delivered = final  # the consumer asked for more: it has the message
                    return
        raise InternalError("the engine ended the request without finishing it")

    def _opened(self, started: Started) -> MessageResponse:
        """The message as known at the start (accounting, diagnostics); records its
        fingerprint for later requests' diagnostics."""
        prepared = self.prepared
        fingerprint = Fingerprint.of(prepared.namespace, prepared.model, prepared.prompt,
                                     started.usage, prepared.sent_messages,
                                     prepared.edit_types)
        asked = prepared.body.diagnostics
        diagnostics = None
        if asked is not None and asked.previous_message_id:
            reason = self._diagnostics.explain(asked.previous_message_id, fingerprint,
                                               started.usage.cache_read_tokens)
            diagnostics = {"cache_miss_reason": reason.to_dict()} if reason else None
        self._diagnostics.record(prepared.message_id, fingerprint)
        return MessageResponse(
            id=prepared.message_id, model=prepared.body.model, content=[], stop_reason=None,
            stop_sequence=None, usage=self._policy.usage(started.usage, 0),
            diagnostics=diagnostics, context_management=prepared.context_management)

    def _final(self, opened: MessageResponse | None, finished: Finished,
               parser: ReplyParser | ThinkingReplyParser) -> MessageResponse:
        """The whole message; ``parser`` has seen all of the reply's text."""
        if opened is None or finished.stop_reason not in STOP_REASONS:
            raise InternalError("the engine aborted the request")
        stop_reason = STOP_REASONS[finished.stop_reason]
        if finished.stop_reason is StopReason.EOS and parser.has_tool_use:
            stop_reason = "tool_use"
        return MessageResponse.model_validate({
            **opened.model_dump(),
            "content": [] if self.prepared.is_prewarm else parser.content(),
            "stop_reason": stop_reason,
            "stop_sequence": finished.stop_sequence,
            "usage": self._policy.usage(finished.usage, finished.output_tokens),
        })

