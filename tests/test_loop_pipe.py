"""The API process's end of the engine pipe: never blocks its loop, frames as ``Connection``."""
from __future__ import annotations

import asyncio
import multiprocessing

import pytest

from preheat.engine.loop_pipe import LoopPipe, frame, unframe

MESSAGES = [("add", list(range(5000))), {"stats": 7}, b"x" * 100_000, None, "end"]


def test_frames_cut_from_a_stream_arriving_in_pieces_come_out_whole_and_in_order():
    stream = b"".join(frame(m) for m in MESSAGES)
    buffer, got = bytearray(), []
    for start in range(0, len(stream), 777):  # pieces that split headers and bodies
        buffer += stream[start:start + 777]
        got += unframe(buffer)
    assert got == MESSAGES and not buffer


def test_a_partial_header_or_body_waits_for_the_rest():
    whole = frame("hello")
    for cut in range(len(whole)):
        buffer = bytearray(whole[:cut])
        assert unframe(buffer) == [] and bytes(buffer) == whole[:cut]


async def test_sends_beyond_the_pipe_buffer_queue_and_reach_a_plain_connection_in_order():
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    loop = asyncio.get_running_loop()
    closed: list[bool] = []
    pipe = LoopPipe(ours, loop, lambda m: None, lambda: closed.append(True))
    big = [(i, list(range(20_000))) for i in range(40)]  # megabytes: far past the buffer
    for message in big:
        pipe.send(message)  # nothing reads yet: it must neither block nor raise
    # the other end reads on a thread, blocking as a core does; the loop writes meanwhile
    received = await loop.run_in_executor(None, lambda: [theirs.recv() for _ in big])
    assert received == big and not closed
    pipe.close()
    theirs.close()


async def test_messages_from_a_plain_connection_arrive_whole_and_eof_closes_once():
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    loop = asyncio.get_running_loop()
    got, closed = [], []
    done = loop.create_future()
    pipe = LoopPipe(ours, loop, got.append,
                    lambda: (closed.append(True), done.set_result(None)))

    def write() -> None:  # on a thread, blocking as a core does, while the loop reads
        for message in MESSAGES:
            theirs.send(message)
        theirs.close()

    await loop.run_in_executor(None, write)
    await asyncio.wait_for(done, 60)
    assert got == MESSAGES and closed == [True] and pipe.closed
    with pytest.raises(OSError):
        pipe.send("after the end")


async def test_flush_writes_the_queue_without_the_loop_while_the_other_end_sends_too():
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    pipe = LoopPipe(ours, asyncio.get_running_loop(), lambda m: None, lambda: None)
    payload = [list(range(20_000))] * 20
    for message in payload:
        pipe.send(message)
    received = []

    def drain() -> None:
        theirs.send(b"y" * 300_000)  # the other end writes as well: flush must read it away
        while len(received) < len(payload):
            received.append(theirs.recv())

    reader = asyncio.get_running_loop().run_in_executor(None, drain)
    assert pipe.flush(60)
    await reader
    assert received == payload
    pipe.close()
    theirs.close()


def test_the_long_header_of_a_message_over_2_gib_is_read_as_connection_writes_it():
    import struct
    payload = frame("tiny")[4:]
    buffer = bytearray(struct.pack("!i", -1) + struct.pack("!Q", len(payload)) + payload)
    assert unframe(buffer) == ["tiny"] and not buffer
