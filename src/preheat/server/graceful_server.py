"""uvicorn, stopped cleanly: ``preheat serve``'s answer to SIGTERM and SIGINT.

uvicorn's own handler would close the listening socket at once (a new client gets a
refused connection, not an answer it can act on), give running streams only its
``timeout_graceful_shutdown``, and raise the signal again once done (exit status 143,
not 0). Instead, the first signal starts a drain: new requests get 529 with
``retry-after``, running ones get the grace period to finish, the rest are ended with
an ``overloaded_error`` (a stream gets it as its ``error`` event), and only then does
uvicorn shut down. A second signal exits at once.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn

from preheat.server.drain import Drain

log = logging.getLogger(__name__)

# After the grace period: how long ended requests get to send their error and close.
ENDING_SECONDS = 5.0


class GracefulServer(uvicorn.Server):
    """A uvicorn server that drains ``drain`` for ``grace`` seconds before it stops."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace: float):
        super().__init__(config)
        self.drain = drain
        self.grace = grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._drain_task: asyncio.Task | None = None

    @property
    def forced(self) -> bool:
        """A second signal cut the drain short."""
        return self.force_exit

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler (uvicorn installs it for SIGINT and SIGTERM)."""
        name = signal.Signals(sig).name
        if self._stopping:
            log.warning("%s again: exiting now, without waiting for running requests", name)
            self.force_exit = self.should_exit = True
            return
        self._stopping = True
        if not self.started or self._loop is None:
            self.should_exit = True  # still starting: nothing to drain
            return
        # a signal handler may interrupt the loop anywhere: schedule, don't run, the drain
        self._loop.call_soon_threadsafe(self._start_drain, name)

    def _start_drain(self, name: str) -> None:
        self._drain_task = asyncio.ensure_future(self._drain(name))

    async def _drain(self, name: str) -> None:
        self.drain.begin()
        log.info("%s: shutting down; new requests get 529, %d in flight get up to %g s to "
                 "finish (a second signal exits at once)", name, len(self.drain), self.grace)
        if not await self.drain.wait_idle(self.grace):
            ended = self.drain.end_rest(
                f"the server is shutting down: this request was still running after the "
                f"{self.grace:g} s shutdown grace period and was ended")
            log.warning("shutdown grace period over: ended %d requests", ended)
            await self.drain.wait_idle(ENDING_SECONDS)
        self.should_exit = True
