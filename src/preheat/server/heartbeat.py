"""Wake a consumer up while an async source is quiet (SSE pings, disconnect checks)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def with_heartbeat(source: AsyncIterable[T], interval: float) -> AsyncIterator[T | None]:
    """Yield ``source``'s items, and ``None`` after every ``interval`` seconds without one.

    The pending read is never cancelled by a heartbeat (that would break the
    source); it is cancelled only when the consumer stops early.
    """
    iterator = aiter(source)
    pending: asyncio.Task | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(_next(iterator))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()


async def _next(iterator: AsyncIterator[T]) -> T:
    return await anext(iterator)
