"""A reasoning model's reply: its ``<think>...</think>`` section as a thinking block, then
the rest read by the ``ReplyParser`` (text and tool calls) at the following indices.

The thinking streams as ``ThinkingPiece``s as it is written (unless its display is
omitted), and closes with the signature that lets a client send it back. A reply cut off
inside its thinking still closes the block, signed, as Anthropic's does.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from preheat.held_text import partial_suffix
from preheat.server.reasoning import CLOSE, OPEN, ThinkingSigner
from preheat.server.reply_parser import (BlockEvent, BlockStart, BlockStop, ReplyParser,
                                         SignaturePiece, ThinkingPiece)


@dataclass(frozen=True)
class ThinkingReply:
    """A reply that thinks: how it starts, and whether its thinking is shown."""

    signer: ThinkingSigner
    opened: bool  # the prompt opened the thinking
    show: bool  # display "summarized" (the default), not "omitted"

    def parser(self, answer: ReplyParser) -> ThinkingReplyParser:
        return ThinkingReplyParser(answer, self.signer, opened=self.opened, show=self.show)


@dataclass
class ThinkingReplyParser:
    """Feed it text with ``feed``, end with ``finish``; both return block events.

    ``opened``: the prompt opened the thinking, so the reply starts inside it; else a
    reply that starts with ``<think>`` thinks and any other is all answer.
    """

    answer: ReplyParser
    signer: ThinkingSigner
    opened: bool = False
    show: bool = True  # display "omitted": the block holds no text, its signature does
    _state: str = "start"  # start | thinking | gap | answer
    _pending: str = ""
    _thinking: str = ""  # never with whitespace at either end: held until text follows
    _signature: str = ""
    _thought_block: bool = False  # a thinking block opened: the answer's blocks come after
    _answered: bool = False  # the answer parser has been fed

    @property
    def has_tool_use(self) -> bool:
        return self.answer.has_tool_use

    def content(self) -> list[dict[str, Any]]:
        thinking = [{"type": "thinking", "thinking": self._thinking if self.show else "",
                     "signature": self._signature}] if self._signature else []
        return thinking + self.answer.content()

    def __post_init__(self) -> None:
        if self.opened:  # a whole reply is fed without begin(): start inside the thinking
            self._state = "thinking"
            self._thought_block = True

    def begin(self) -> list[BlockEvent]:
        """Events due before any text: the thinking block, when the prompt opened it."""
        return self._open_thinking() if self.opened else []

    def feed(self, text: str) -> list[BlockEvent]:
        self._pending += text
        out: list[BlockEvent] = []
        while self._pending and getattr(self, f"_on_{self._state}")(out):
            pass
        return out

    def finish(self) -> list[BlockEvent]:
        out: list[BlockEvent] = []
        if self._state == "start" and self._pending.strip() == "":
            self._pending = ""  # nothing but whitespace came
        if self._state in ("start", "gap") and self._pending:
            out += self._to_answer(self._pending)
        elif self._state == "thinking":
            out += self._thought(self._pending.rstrip()) + self._close_thinking()
        self._pending = ""
        if self._answered or not self._signature:
            out += self._shifted(self.answer.finish())
        return out

    # ---- states ------------------------------------------------------------------------

    def _on_start(self, out: list[BlockEvent]) -> bool:
        text = self._pending.lstrip()
        if text.startswith(OPEN):
            self._pending = text[len(OPEN):]
            self._state = "thinking"
            out += self._open_thinking()
            return True
        if OPEN.startswith(text):
            return False  # may still become the opening tag
        out += self._to_answer(self._pending)
        self._pending = ""
        return False

    def _on_thinking(self, out: list[BlockEvent]) -> bool:
        at = self._pending.find(CLOSE)
        if at >= 0:
            out += self._thought(self._pending[:at].rstrip()) + self._close_thinking()
            self._pending = self._pending[at + len(CLOSE):]
            self._state = "gap"
            return True
        keep = partial_suffix(self._pending, CLOSE)
        ready = self._pending[:len(self._pending) - keep].rstrip()
        out += self._thought(ready)
        self._pending = self._pending[len(ready):]
        return False

    def _on_gap(self, out: list[BlockEvent]) -> bool:
        """The whitespace between the thinking and the answer is neither."""
        text = self._pending.lstrip()
        if text:
            out += self._to_answer(text)
        self._pending = ""
        return False

    # ---- blocks ------------------------------------------------------------------------

    def _open_thinking(self) -> list[BlockEvent]:
        self._thought_block = True
        return [BlockStart(0, {"type": "thinking", "thinking": "", "signature": ""})]

    def _thought(self, text: str) -> list[BlockEvent]:
        """Thinking as written, without the whitespace at its ends (the newlines around it
        are the format's, not the model's thought): callers pass text up to its last
        non-whitespace, and the first piece loses its leading whitespace."""
        if not self._thinking:
            text = text.lstrip()
        if not text:
            return []
        self._thinking += text
        return [ThinkingPiece(0, text)] if self.show else []

    def _close_thinking(self) -> list[BlockEvent]:
        self._signature = self.signer.sign(self._thinking)
        return [SignaturePiece(0, self._signature), BlockStop(0)]

    def _to_answer(self, text: str) -> list[BlockEvent]:
        self._state = "answer"
        out = [] if self._answered else self._shifted(self.answer.begin())
        self._answered = True
        return out + self._shifted(self.answer.feed(text))

    def _on_answer(self, out: list[BlockEvent]) -> bool:
        out += self._to_answer(self._pending)
        self._pending = ""
        return False

    def _shifted(self, events: list[BlockEvent]) -> list[BlockEvent]:
        """The answer's blocks come after the thinking block, when there is one."""
        if not self._thought_block:
            return events
        return [replace(e, index=e.index + 1) for e in events]
