"""A reply as an HTTP response: an SSE stream as it is made, or one JSON body at its end.

The OpenAI routes (chat completions, completions, responses) differ only in how they
write a reply; running it, closing it with the stream and watching for a client that went
away are the same for all of them, and live here.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response, StreamingResponse

from preheat.server.messages import MessageService, PreparedMessage
from preheat.server.reply import Reply
from preheat.server.reply_events import Closed
from preheat.server.whole_reply import DISCONNECT_CHECK_SECONDS, whole_reply


async def reply_response(service: MessageService, prepared: PreparedMessage, request_id: str,
                         stream: bool, render: Callable[[Reply], AsyncIterator[bytes]],
                         whole: Callable[[Closed], Awaitable[dict]],
                         is_disconnected: Callable[[], Awaitable[bool]]) -> Response | None:
    """Run ``prepared``: streamed as ``render`` writes it, or ``whole``'s body once it is
    closed; None if a non-streaming client went away first."""
    headers = {"x-request-id": request_id}
    if stream:
        reply = await service.run(prepared)
        # closes the reply after the last chunk or once the client disconnects
        return StreamingResponse(render(reply), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", **headers},
                                 background=BackgroundTask(reply.close))
    reply = await service.run(prepared, heartbeat=DISCONNECT_CHECK_SECONDS)
    closed = await whole_reply(reply, is_disconnected)
    if closed is None:
        return None
    return JSONResponse(await whole(closed), headers=headers)
