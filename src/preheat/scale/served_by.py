"""The ``preheat-replica`` response header: which replica served the request.

The ingress's engine client learns the replica when the request is admitted, deep inside
a route; this middleware, outside every route, gives each HTTP request a slot for it (a
context variable: the route and the tasks it starts see the same slot) and writes the
header when the response starts.
"""
from __future__ import annotations

from contextvars import ContextVar

HEADER = b"preheat-replica"

_slot: ContextVar[list[str] | None] = ContextVar("preheat_served_by", default=None)


def note_replica(replica_id: str) -> None:
    """The request being answered (if any) is served by ``replica_id``."""
    slot = _slot.get()
    if slot is not None:
        slot.append(replica_id)


class ServedByHeader:
    """ASGI middleware adding ``preheat-replica`` to responses whose request reached one."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        slot: list[str] = []
        token = _slot.set(slot)

        async def send_with_header(message):
            if message["type"] == "http.response.start" and slot:
                headers = [*message.get("headers", ()), (HEADER, slot[-1].encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_header)
        finally:
            _slot.reset(token)
