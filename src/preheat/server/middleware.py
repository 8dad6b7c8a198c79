"""Request ids on every response, and the last line of defence against tracebacks."""
from __future__ import annotations

import logging
import secrets

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from preheat.server.errors import error_body

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "request-id"


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


class RequestIdMiddleware:
    """Gives each request an id (``request.state.request_id``, ``request-id`` header).

    An exception no handler caught is logged with its traceback and answered
    with Anthropic's 500 body; the client never sees the traceback.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            if not started:  # else the client sees the connection end mid-response
                body = error_body("api_error", "Internal server error", request_id)
                await JSONResponse(body, status_code=500)(scope, receive, send_with_id)
