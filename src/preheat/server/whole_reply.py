"""A reply as one finished message: what a non-streaming request answers with."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from preheat.server.reply import Reply
from preheat.server.reply_events import Closed

# How often a non-streaming request checks that its client is still there: the heartbeat
# to run its reply with.
DISCONNECT_CHECK_SECONDS = 1.0


async def whole_reply(reply: Reply,
                      is_disconnected: Callable[[], Awaitable[bool]]) -> Closed | None:
    """The reply's end: the finished message and the engine's account of it; None if the
    client went away first (the reply is then abandoned, which aborts it). Failures raise
    as ``APIError``s."""
    loop = asyncio.get_running_loop()
    next_check = loop.time() + DISCONNECT_CHECK_SECONDS
    closed: Closed | None = None
    try:
        async for event in reply:
            if loop.time() >= next_check:
                if await is_disconnected():
                    return None
                next_check = loop.time() + DISCONNECT_CHECK_SECONDS
            if isinstance(event, Closed):
                closed = event  # read on to the end: then it counts as delivered
    finally:
        reply.close()
    return closed
