"""Draining for a clean stop: the requests in flight, and whether new ones are admitted.

``RequestTracker`` enters every API request here. Once ``begin`` is called (the first
SIGTERM or SIGINT of ``preheat serve``, see ``graceful_server.py``), ``admit``, a
dependency of every route, refuses new requests with 529 ``overloaded_error`` (raised, so
the app writes it in the shape its path speaks); the ones in flight may finish
(``wait_idle``), and whatever is left when the grace period ends is ended with an error
(``end_rest``).
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.requests import Request

from preheat.server.errors import OverloadedError

if TYPE_CHECKING:
    from preheat.server.request_record import RequestRecord

_POLL_SECONDS = 0.05

REFUSED_MESSAGE = ("the server is shutting down and takes no new requests; retry shortly "
                   "(on another instance, or once it has restarted)")


class Drain:
    """Admitted requests still being answered, and whether the server is shutting down."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight: set[RequestRecord] = set()

    def __len__(self) -> int:
        return len(self._in_flight)

    def enter(self, record: RequestRecord) -> None:
        self._in_flight.add(record)

    def leave(self, record: RequestRecord) -> None:
        self._in_flight.discard(record)

    def begin(self) -> None:
        """Admit nothing more; what is in flight goes on."""
        self.draining = True

    async def admit(self, request: Request) -> None:
        """A dependency of every route (async, so it runs on the loop, not a thread): while
        draining, refuse the request with 529 (``retry-after``). Probes and scrapes pass:
        the tracker gives them no record."""
        record = getattr(request.state, "record", None)
        if self.draining and record is not None:
            self.leave(record)  # nothing to wait for
            raise OverloadedError(REFUSED_MESSAGE)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no admitted request is left, up to ``timeout`` s; True if none is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._in_flight and loop.time() < deadline:
            await asyncio.sleep(_POLL_SECONDS)
        return not self._in_flight

    def end_rest(self, message: str) -> int:
        """End every request still in flight with an ``overloaded_error`` saying ``message``
        (a stream gets it as its ``error`` event); returns how many there were."""
        records = list(self._in_flight)
        for record in records:
            record.interrupt(OverloadedError(message))  # one each: raising mutates tracebacks
        return len(records)
