"""The API process's end of the pipe to the engine core, driven by its event loop.

``multiprocessing.Connection.send`` and ``recv`` assume a blocking pipe; on a
non-blocking one, a message that does not fit the pipe's buffer raises
``BlockingIOError`` halfway through (a burst of requests with long prompts while the
core runs a long step), and one that has only partly arrived does the same on read.
A blocking pipe would instead stall the event loop, and with it the reading that the
core, blocked on its own send, waits for. So this end never blocks: what the core has
not taken yet waits in a buffer, written as the pipe drains (a loop writer), and what
arrives is cut into whole messages before any is unpickled.

The frames are ``Connection``'s own (a 4-byte big-endian length, or -1 and an 8-byte
one, then the pickle), so the core's end stays a plain ``Connection``.
"""
from __future__ import annotations

import asyncio
import os
import select
import struct
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_READ_BYTES = 1 << 20


def frame(message: object) -> bytes:
    """``message`` as ``Connection.send`` writes it."""
    payload = bytes(ForkingPickler.dumps(message))
    if len(payload) > 0x7FFFFFFF:
        return _SHORT.pack(-1) + _LONG.pack(len(payload)) + payload
    return _SHORT.pack(len(payload)) + payload


def unframe(buffer: bytearray) -> list[object]:
    """The whole messages at the front of ``buffer``, which loses them (a partial one stays)."""
    messages: list[object] = []
    done = 0  # bytes of whole messages taken; cut once, not per message
    while len(buffer) - done >= _SHORT.size:
        (size,), start = _SHORT.unpack_from(buffer, done), done + _SHORT.size
        if size == -1:
            if len(buffer) - done < _SHORT.size + _LONG.size:
                break
            (size,), start = _LONG.unpack_from(buffer, start), start + _LONG.size
        if len(buffer) < start + size:
            break
        messages.append(ForkingPickler.loads(buffer[start:start + size]))
        done = start + size
    del buffer[:done]
    return messages


class LoopPipe:
    """Messages to and from the core on ``loop``, never blocking it.

    ``on_message`` gets each message as it arrives; ``on_closed`` is called once when the
    core's end is gone (EOF or a broken pipe), after which ``send`` raises ``OSError``.
    """

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop,
                 on_message: Callable[[object], None], on_closed: Callable[[], None]):
        self._conn = conn
        self._fd = conn.fileno()
        self._loop = loop
        self._on_message = on_message
        self._on_closed = on_closed
        self._in = bytearray()
        self._out = bytearray()
        self.closed = False
        os.set_blocking(self._fd, False)
        loop.add_reader(self._fd, self._readable)

    def send(self, message: object) -> None:
        """Queue ``message``; it is written now if the pipe has room, else as it drains."""
        if self.closed:
            raise OSError("the pipe to the engine is closed")
        waiting = bool(self._out)
        self._out += frame(message)
        if not waiting:
            self._writable()
            if self._out and not self.closed:
                self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        try:
            while self._out:
                written = os.write(self._fd, self._out)
                del self._out[:written]
        except BlockingIOError:
            return
        except OSError:
            self._lost()
            return
        if not self._loop.is_closed():
            self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        self._in += data
        for message in unframe(self._in):
            if self.closed:  # a message's handler closed the pipe
                return
            self._on_message(message)

    def _lost(self) -> None:
        if not self.closed:
            self.close()
            self._on_closed()

    def flush(self, timeout: float) -> bool:
        """Write what is queued within ``timeout`` seconds, without the loop (at shutdown),
        reading and dropping what the core sends meanwhile so that it can take it in."""
        deadline = time.monotonic() + timeout
        while self._out and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            readable, writable, _ = select.select([self._fd], [self._fd], [], left)
            if readable:
                try:
                    if not os.read(self._fd, _READ_BYTES):
                        return False
                except BlockingIOError:
                    pass
                except OSError:
                    return False
            if writable:
                self._writable()
        return not self._out

    def close(self) -> None:
        """Stop reading and writing, and close this end."""
        if self.closed:
            return
        self.closed = True
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._conn.close()
