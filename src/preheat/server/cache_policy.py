"""Anthropic's prompt-caching rules on top of the engine's pinned prefixes.

Requests mark blocks with ``cache_control``; this module checks the marks,
turns them into engine ``CacheBreakpoint``s (token position + TTL in seconds)
and turns the engine's exact accounting back into the API's ``usage`` object.
"""
from __future__ import annotations

from dataclasses import dataclass

from preheat.engine import CacheBreakpoint, CacheUsage
from preheat.server.errors import InvalidRequestError
from preheat.server.prompt_builder import BuiltPrompt
from preheat.server.protocol import CacheCreation, PromptRequest, Usage
from preheat.server.settings import ServerSettings

MAX_BREAKPOINTS = 4


@dataclass(frozen=True)
class Mark:
    """A requested breakpoint: the cached prefix ends at token ``position``."""

    position: int
    ttl: str  # "5m" or "1h"


@dataclass(frozen=True)
class CachePolicy:
    min_tokens: int  # shorter prefixes are processed without caching
    ttl_5m_seconds: float
    ttl_1h_seconds: float

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> CachePolicy:
        return cls(settings.min_cache_tokens, settings.ttl_5m_seconds, settings.ttl_1h_seconds)

    def breakpoints(self, request: PromptRequest,
                    prompt: BuiltPrompt) -> tuple[CacheBreakpoint, ...]:
        """The engine breakpoints for a request (400 for an invalid set of marks)."""
        return self.to_engine(requested_marks(request, prompt))

    def to_engine(self, marks: list[Mark]) -> tuple[CacheBreakpoint, ...]:
        """Drop marks below the minimum length (plain input, no error) and map TTLs."""
        out: list[CacheBreakpoint] = []
        for mark in marks:
            if mark.position < max(self.min_tokens, 1):
                continue
            if out and out[-1].position >= mark.position:
                continue  # two marks on one position: the first (longer TTL) covers it
            ttl = self.ttl_1h_seconds if mark.ttl == "1h" else self.ttl_5m_seconds
            out.append(CacheBreakpoint(mark.position, ttl))
        return tuple(out)

    def usage(self, cache: CacheUsage, output_tokens: int) -> Usage:
        """The API's usage object; the three input figures add up to the prompt."""
        one_hour = 0
        if self.ttl_1h_seconds != self.ttl_5m_seconds:
            one_hour = cache.cache_write_by_ttl.get(self.ttl_1h_seconds, 0)
        return Usage(
            input_tokens=cache.input_tokens,
            output_tokens=output_tokens,
            cache_creation_input_tokens=cache.cache_write_tokens,
            cache_read_input_tokens=cache.cache_read_tokens,
            cache_creation=CacheCreation(
                ephemeral_5m_input_tokens=cache.cache_write_tokens - one_hour,
                ephemeral_1h_input_tokens=one_hour,
            ),
        )


def requested_marks(request: PromptRequest, prompt: BuiltPrompt) -> list[Mark]:
    """Marks in prompt order: explicit ``cache_control`` blocks, then the automatic one.

    Top-level ``cache_control`` marks the last block of the prompt, so it moves
    forward as a conversation grows; it counts toward the limit of four.
    """
    marks = [Mark(b.end, b.cache_control.ttl) for b in prompt.blocks if b.cache_control]
    last = prompt.blocks[-1] if prompt.blocks else None
    if request.cache_control is not None and last is not None and last.cache_control is None:
        marks.append(Mark(last.end, request.cache_control.ttl))
    if len(marks) > MAX_BREAKPOINTS:
        raise InvalidRequestError(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(marks)}.")
    for earlier, later in zip(marks, marks[1:]):
        if earlier.ttl == "5m" and later.ttl == "1h":
            raise InvalidRequestError(
                "a cache_control breakpoint with ttl='1h' cannot come after one with ttl='5m': "
                "longer TTLs must come first in the prompt (tools, system, messages)")
    return marks
