"""A reply as Anthropic's server-sent events: ``message_start``, content block events,
``message_delta``, ``message_stop``, with ``ping``s while the engine is quiet.

A failure once the stream has started (its status already sent) is an ``error`` event.
"""
from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from preheat.server.errors import APIError
from preheat.server.reply_events import Closed, Opened, Ping, ReplyEvent
from preheat.server.reply_parser import (BlockEvent, BlockStart, BlockStop, JsonPiece,
                                         SignaturePiece, TextPiece, ThinkingPiece)
from preheat.server.sse import PING, sse_event


async def message_sse(reply: AsyncIterable[ReplyEvent], request_id: str) -> AsyncIterator[bytes]:
    """The SSE frames of ``reply``, in Anthropic's order."""
    try:
        async for event in reply:
            if isinstance(event, Ping):
                yield PING
            elif isinstance(event, Opened):
                yield sse_event("message_start", {"type": "message_start",
                                                  "message": event.message.model_dump()})
            elif isinstance(event, Closed):
                yield sse_event("message_delta", {
                    "type": "message_delta",
                    "delta": {"stop_reason": event.message.stop_reason,
                              "stop_sequence": event.message.stop_sequence},
                    "usage": event.message.usage.model_dump()})
                yield sse_event("message_stop", {"type": "message_stop"})
            else:
                yield _block_sse(event)
    except APIError as err:
        yield sse_event("error", err.body(request_id))


def _block_sse(event: BlockEvent) -> bytes:
    if isinstance(event, BlockStart):
        return sse_event("content_block_start", {"type": "content_block_start",
                                                 "index": event.index,
                                                 "content_block": event.block})
    if isinstance(event, TextPiece):
        delta = {"type": "text_delta", "text": event.text}
    elif isinstance(event, JsonPiece):
        delta = {"type": "input_json_delta", "partial_json": event.partial_json}
    elif isinstance(event, ThinkingPiece):
        delta = {"type": "thinking_delta", "thinking": event.thinking}
    elif isinstance(event, SignaturePiece):
        delta = {"type": "signature_delta", "signature": event.signature}
    else:
        assert isinstance(event, BlockStop)
        return sse_event("content_block_stop", {"type": "content_block_stop",
                                                "index": event.index})
    return sse_event("content_block_delta", {"type": "content_block_delta",
                                             "index": event.index, "delta": delta})
