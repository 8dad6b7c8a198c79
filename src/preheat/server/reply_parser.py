"""Generated text -> content blocks: text, and tool calls in the model's ``ToolCallForm``.

Text arrives in arbitrary pieces (whatever each token decoded to); the parser
turns it into block events as soon as each is certain, so a call's arguments
stream as ``input_json_delta`` pieces while the model writes them. A reply
with no tools is one text block, opened at once.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import from_json

from preheat.held_text import partial_suffix
from preheat.server.tool_format import HERMES, ToolCallForm


def new_tool_use_id() -> str:
    return f"toolu_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class BlockStart:
    index: int
    block: dict[str, Any]  # as content_block_start carries it


@dataclass(frozen=True)
class TextPiece:
    index: int
    text: str


@dataclass(frozen=True)
class JsonPiece:
    index: int
    partial_json: str


@dataclass(frozen=True)
class ThinkingPiece:
    index: int
    thinking: str


@dataclass(frozen=True)
class SignaturePiece:
    index: int
    signature: str


@dataclass(frozen=True)
class BlockStop:
    index: int


BlockEvent = BlockStart | TextPiece | JsonPiece | ThinkingPiece | SignaturePiece | BlockStop


@dataclass
class _Block:
    kind: str  # "text" | "tool_use"
    text: str = ""  # text, or a call's arguments as JSON text
    id: str = ""
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "text":
            return {"type": "text", "text": self.text}
        return {"type": "tool_use", "id": self.id, "name": self.name,
                "input": _parse_arguments(self.text)}


@dataclass
class _JsonExtent:
    """Finds where one JSON value ends in text that arrives piecewise."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False

    def feed(self, text: str) -> int:
        """How many chars of ``text`` belong to the value (all of them if it goes on)."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return len(text)


@dataclass
class ReplyParser:
    """Feed it text with ``feed``, end with ``finish``; both return block events."""

    tool_calls: bool
    form: ToolCallForm = HERMES
    blocks: list[_Block] = field(default_factory=list)
    _pending: str = ""
    _state: str = "text"  # text | head | arguments | close | between
    _extent: _JsonExtent | None = None
    _open: bool = False  # the last block is still open
    _skip: int = 0  # where in _pending to look for the next call (past a false start)
    _gap: str = ""  # whitespace between text and what may be a call

    @property
    def has_tool_use(self) -> bool:
        return any(b.kind == "tool_use" for b in self.blocks)

    def content(self) -> list[dict[str, Any]]:
        return [b.to_dict() for b in self.blocks]

    def begin(self) -> list[BlockEvent]:
        """Events due before any text: a plain reply's text block opens at once."""
        return [] if self.tool_calls else self._start(_Block("text"))

    def feed(self, text: str) -> list[BlockEvent]:
        if not self.tool_calls:
            return self._text(text)
        self._pending += text
        out: list[BlockEvent] = []
        while self._pending:
            step = getattr(self, f"_on_{self._state}")(out)
            if not step:
                break
        return out

    def finish(self) -> list[BlockEvent]:
        """The reply ended: release held text, close what is open (a cut-off call keeps
        the arguments it got), and make sure there is at least one block."""
        out: list[BlockEvent] = []
        if self.tool_calls and self._state == "text" and self._pending:
            out += self._text(self._pending)
        self._pending = ""
        out += self._close()
        if not self.blocks:
            out += self._start(_Block("text")) + self._close()
        return out

    # ---- states: each consumes from _pending and says whether to go on -----------------

    def _on_text(self, out: list[BlockEvent]) -> bool:
        trigger = self.form.trigger
        at = self._pending.find(trigger, self._skip)
        if at >= 0:
            text = self._pending[:at].rstrip()
            out += self._text(text)
            self._gap = self._pending[len(text):at]  # dropped if a call follows
            self._pending = self._pending[at:]
            self._skip = 0
            self._state = "head"
            return True
        # hold back what could still become a call, and trailing whitespace (it is dropped
        # if a call follows)
        keep = partial_suffix(self._pending, trigger)
        body = self._pending[:len(self._pending) - keep]
        ready = body.rstrip()
        out += self._text(ready)
        self._pending = self._pending[len(ready):]
        self._skip = max(0, self._skip - len(ready))
        return False

    def _on_head(self, out: list[BlockEvent]) -> bool:
        head = _read_head(self._pending, self.form)
        if head is None:
            return False  # not all here yet
        if head is _NOT_A_CALL:
            # text that starts like a call but isn't one (a structured reply whose first key
            # is "name", say; a grammar lets no real call stray): it is text after all
            self._pending = self._gap + self._pending
            self._skip = len(self._gap) + len(self.form.trigger)
            self._state = "text"
            return True
        name, end = head
        out += self._close()
        out += self._start(_Block("tool_use", id=new_tool_use_id(), name=name))
        self._pending = self._pending[end:]
        self._extent = _JsonExtent()
        self._state = "arguments"
        return True

    def _on_arguments(self, out: list[BlockEvent]) -> bool:
        n = self._extent.feed(self._pending)
        piece, self._pending = self._pending[:n], self._pending[n:]
        self.blocks[-1].text += piece
        out.append(JsonPiece(len(self.blocks) - 1, piece))
        if self._extent.depth == 0:
            out += self._close()
            self._state = "close"
        return True

    def _on_close(self, out: list[BlockEvent]) -> bool:
        if len(self._pending) < len(self.form.tail):
            return False
        self._pending = self._pending[len(self.form.tail):]
        self._state = "between"
        return True

    def _on_between(self, out: list[BlockEvent]) -> bool:
        if len(self._pending) < len(self.form.separator):
            return False
        self._pending = self._pending[len(self.form.separator):]
        self._gap = ""
        self._state = "head"
        return True

    # ---- blocks -------------------------------------------------------------------------

    def _text(self, text: str) -> list[BlockEvent]:
        if not text:
            return []
        out = [] if self._open else self._start(_Block("text"))
        self.blocks[-1].text += text
        return out + [TextPiece(len(self.blocks) - 1, text)]

    def _start(self, block: _Block) -> list[BlockEvent]:
        self.blocks.append(block)
        self._open = True
        start = {"type": "text", "text": ""} if block.kind == "text" else {
            "type": "tool_use", "id": block.id, "name": block.name, "input": {}}
        return [BlockStart(len(self.blocks) - 1, start)]

    def _close(self) -> list[BlockEvent]:
        if not self._open:
            return []
        self._open = False
        return [BlockStop(len(self.blocks) - 1)]


_NOT_A_CALL = object()


def _read_head(text: str, form: ToolCallForm):
    """(name, length) of the call head ``text`` starts with; None if ``text`` may still
    grow into one; _NOT_A_CALL if it can't."""
    before = form.before_name
    if not text.startswith(before):
        return None if before.startswith(text) else _NOT_A_CALL
    rest = text[len(before):]
    if not rest:
        return None
    if rest[0] != '"':
        return _NOT_A_CALL
    close = _string_end(rest)
    if close is None:
        return None
    after = rest[close + 1:]
    if not after.startswith(form.after_name):
        return None if form.after_name.startswith(after) else _NOT_A_CALL
    return from_json(rest[:close + 1]), len(before) + close + 1 + len(form.after_name)


def _string_end(text: str) -> int | None:
    """Index of the quote that closes the JSON string ``text`` opens; None if it goes on."""
    escaped = False
    for i, ch in enumerate(text[1:], 1):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            return i
    return None


def _parse_arguments(text: str) -> dict[str, Any]:
    """A call's arguments; a call cut off by max_tokens keeps what parses of them (whole
    values only, as the SDK's stream accumulator does)."""
    try:
        value = from_json(text, allow_partial=True) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
