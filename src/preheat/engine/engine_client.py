"""What the API sees of an engine: submit a request, iterate its events, abort it.

Two engines implement it. ``EngineProcess`` runs the engine core in a process of its own
(``preheat serve``): model compute and HTTP never share a GIL. ``AsyncEngine`` runs it on a
thread of the caller's process (tests, ``preheat generate``). Both are driven from one
asyncio event loop.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from preheat.engine.output import EngineEvent, Finished
from preheat.engine.request import GenerationRequest
from preheat.engine.stats import EngineStats, ReplicaState
from preheat.tokenizer.tokenizer import Tokenizer


class RequestStream:
    """Events of one request: ``Started``, ``TextDelta``..., ``Finished``.

    An exception pushed into the stream (the engine failed or stopped) is raised to
    the consumer and ends the stream.
    """

    def __init__(self, request_id: str, on_abort: Callable[[str], None]):
        self.request_id = request_id
        self._on_abort = on_abort
        self._queue: asyncio.Queue[EngineEvent | BaseException] = asyncio.Queue()
        self._done = False

    def push(self, item: EngineEvent | BaseException) -> None:
        """Called by the engine side, on the event loop's thread."""
        self._queue.put_nowait(item)

    async def __aiter__(self) -> AsyncIterator[EngineEvent]:
        while not self._done:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if isinstance(item, Finished):
                self._done = True
            yield item

    async def steps(self) -> AsyncIterator[list[EngineEvent]]:
        """The events in the order they come, grouped as they arrived: the engine delivers
        each step's events for a request together, so a group is one step's output (a
        relay sends one message a step, not one a token). Unlike iterating the events one
        by one, an ``abort`` takes effect between groups, not between events."""
        while not self._done:
            group = [await self._queue.get()]
            while not self._queue.empty() and not isinstance(group[-1], (Finished, BaseException)):
                group.append(self._queue.get_nowait())
            if isinstance(group[-1], BaseException):
                self._done = True
                if len(group) > 1:
                    yield group[:-1]
                raise group[-1]
            self._done = isinstance(group[-1], Finished)
            yield group

    def abort(self) -> None:
        """Stop generating and free the request's KV blocks before the next step."""
        if not self._done:
            self._done = True
            self._on_abort(self.request_id)


class EngineClient(Protocol):
    """The engine as the HTTP layer uses it."""

    model_id: str
    tokenizer: Tokenizer
    context_window: int
    restarting: bool  # a new engine is starting in place of one that failed
    restarts: int  # engines started in place of failed ones

    async def submit(self, request: GenerationRequest) -> RequestStream:
        """Admit a request (its ``Started`` event is first in the stream); raises
        ``EngineError`` subclasses for requests that can't run."""
        ...

    async def stats(self) -> EngineStats:
        ...

    async def replicas(self) -> list[ReplicaState]:
        """The engines serving requests: this one, or each replica behind a router."""
        ...

    def shutdown(self) -> None:
        ...
