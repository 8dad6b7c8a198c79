"""One reply and when its parts arrived: sent, first text, done; streamed or not."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from preheat.client.token_usage import TokenUsage


@dataclass
class TimedReply:
    """Filled in as the reply arrives, so an interrupted one keeps what came."""

    started: float = field(default_factory=time.perf_counter)
    first_text_at: float | None = None
    finished_at: float | None = None
    text: str = ""
    usage: TokenUsage | None = None  # known once the reply is complete

    def add_text(self, text: str) -> None:
        if self.first_text_at is None:
            self.first_text_at = time.perf_counter()
        self.text += text

    def finish(self, message: Any) -> None:
        """Record the complete SDK ``Message``."""
        self.finished_at = time.perf_counter()
        self.usage = TokenUsage.from_sdk(message.usage)

    @property
    def ttft_s(self) -> float:
        """Seconds from sending to the first text (to the end for a reply without text)."""
        seen = self.first_text_at if self.first_text_at is not None else self.finished_at
        return (seen if seen is not None else time.perf_counter()) - self.started

    @property
    def total_s(self) -> float:
        return (self.finished_at or time.perf_counter()) - self.started

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: output tokens after the first, per second after the first text;
        None when that is not measurable (one token, or the reply came whole)."""
        if self.usage is None or self.first_text_at is None or self.finished_at is None:
            return None
        decoding = self.finished_at - self.first_text_at
        if self.usage.output_tokens < 2 or decoding <= 0:
            return None
        return (self.usage.output_tokens - 1) / decoding


def stream_timed(client: Any, params: dict[str, Any], reply: TimedReply,
                 on_text: Callable[[str], None] | None = None) -> TimedReply:
    """Stream a reply into ``reply`` with ``client.messages.stream``, calling ``on_text``
    with each piece of text as it comes. Leaving early (an exception, Ctrl-C) closes the
    stream, which makes the server stop generating."""
    with client.messages.stream(**params) as stream:
        for text in stream.text_stream:
            reply.add_text(text)
            if on_text is not None:
                on_text(text)
        reply.finish(stream.get_final_message())
    return reply


def create_timed(client: Any, params: dict[str, Any]) -> TimedReply:
    """A non-streamed reply: all its text arrives at once, with the response."""
    reply = TimedReply()
    message = client.messages.create(**params)
    reply.finish(message)
    reply.first_text_at = reply.finished_at
    reply.text = "".join(block.text for block in message.content if block.type == "text")
    return reply
