"""SSE framing as the SDK parses it, and heartbeats while the engine is quiet."""
from __future__ import annotations

import asyncio
import json

from preheat.server.heartbeat import with_heartbeat
from preheat.server.sse import PING, sse_event


def test_an_event_is_two_lines_and_a_blank_line():
    frame = sse_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": "a\nb ünï"}})
    text = frame.decode()
    assert text.endswith("\n\n")
    event_line, data_line = text[:-2].split("\n")
    assert event_line == "event: content_block_delta"
    assert data_line.startswith("data: ")
    assert json.loads(data_line[len("data: "):])["delta"]["text"] == "a\nb ünï"


def test_ping_event():
    assert PING == b'event: ping\ndata: {"type":"ping"}\n\n'


async def _ticks(delays: list[float]):
    for i, delay in enumerate(delays):
        await asyncio.sleep(delay)
        yield i


async def test_heartbeat_yields_none_while_the_source_is_quiet():
    seen = [item async for item in with_heartbeat(_ticks([0.0, 0.3, 0.0]), interval=0.05)]
    assert [s for s in seen if s is not None] == [0, 1, 2]
    assert seen.index(1) > seen.index(0) + 1  # at least one heartbeat in the gap


async def test_heartbeat_passes_errors_through():
    async def failing():
        yield 1
        raise RuntimeError("engine failed")

    seen = []
    try:
        async for item in with_heartbeat(failing(), interval=10):
            seen.append(item)
    except RuntimeError as err:
        seen.append(str(err))
    assert seen == [1, "engine failed"]


async def test_stopping_early_cancels_the_pending_read():
    cancelled = asyncio.Event()

    async def endless():
        yield 0
        try:
            await asyncio.sleep(3600)
            yield 1
        except asyncio.CancelledError:
            cancelled.set()
            raise

    beats = with_heartbeat(endless(), interval=0.01)
    assert await anext(beats) == 0
    assert await anext(beats) is None
    await beats.aclose()
    await asyncio.wait_for(cancelled.wait(), timeout=5)
