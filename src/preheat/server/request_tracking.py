"""Every API request gets a ``RequestRecord``: counted, access-logged, and known to the drain.

An ASGI middleware, inside ``RequestIdMiddleware`` (it needs the request id). Probes and
scrapes (``/health``, ``/metrics``) pass untracked: they would drown the log and the
counters, and they must keep answering during a shutdown.
"""
from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from preheat.server.access_log import log_access
from preheat.server.drain import Drain
from preheat.server.metrics import ServerMetrics
from preheat.server.request_record import RequestRecord

UNTRACKED_PATHS = frozenset({"/health", "/metrics"})


class RequestTracker:
    """Opens a record per request (``request.state.record``) and enters it in the drain;
    closes it when the response has ended."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, drain: Drain):
        self.app = app
        self.metrics = metrics
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACKED_PATHS:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        record = state["record"] = RequestRecord(state.get("request_id", "-"), scope, self.metrics)
        status: int | None = None

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self._open(record)
        try:
            await self.app(scope, receive, send_noting_status)
        except ClientDisconnect:
            record.abandoned()
            raise
        except BaseException:
            # the response broke off (a bug, or a forced exit cancelled it): whatever status
            # went out first, the client did not get its answer
            record.failed(500)
            raise
        finally:
            self._close(record, status)

    def _open(self, record: RequestRecord) -> None:
        self.drain.enter(record)
        self.metrics.in_flight.inc()

    def _close(self, record: RequestRecord, http_status: int | None) -> None:
        self.drain.leave(record)
        self.metrics.in_flight.dec()
        record.close(http_status)
        self.metrics.request_done(record.endpoint, record.model, record.status,
                                  None if record.usage is None else record.duration)
        log_access(record)
