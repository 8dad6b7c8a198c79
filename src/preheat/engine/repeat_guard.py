"""Ends a reply before a segment that repeats an earlier one (``DistinctSegments``).

A grammar fixes a tool call's shape but not how many calls come: a small model, greedy,
writes the call it just wrote again and again until ``max_tokens``. The guard watches
the reply's text: while the segment being written is still the start of an earlier one,
it is held back (nothing of it reaches the client), and once it equals an earlier one
the reply ends where it began. A segment that turns out different is released at once,
so distinct calls stream as before.

Segment boundaries are ``opening`` the first time, then only ``separator + opening``:
a call's compact JSON never holds a raw separator (a newline), so text inside a call
that looks like an opening (Llama 3's ``{"name": ``, nested) starts no segment.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from preheat.held_text import partial_suffix
from preheat.engine.request import DistinctSegments


@dataclass(frozen=True)
class Verdict:
    hold_from: int  # text from here on must wait
    repeat_at: int | None  # the reply ends here: a repeated segment starts at it


@dataclass
class RepeatGuard:
    rule: DistinctSegments
    _starts: list[int] = field(default_factory=list)  # where each segment's boundary is
    _done: list[str] = field(default_factory=list)  # finished segments' text
    _scan: int = 0  # where the next boundary may start

    @property
    def _boundary(self) -> str:
        return self.rule.separator + self.rule.opening if self._starts else self.rule.opening

    def check(self, text: str) -> Verdict:
        """``text``: the whole reply so far (it only ever grows)."""
        self._find_boundaries(text)
        if not self._starts:  # no segment yet: nothing can repeat
            return Verdict(len(text), None)
        if self._done:
            start = self._starts[-1]
            current = text[start + len(self.rule.separator):]
            if current.rstrip() in self._done:
                return Verdict(start, start)
            if any(done.startswith(current) for done in self._done):
                return Verdict(start, None)
        # the next boundary may be starting at the very end: it would hold from there
        return Verdict(len(text) - partial_suffix(text, self._boundary), None)

    def repeating(self, text: str) -> int | None:
        """Where the segment being written starts, if it is so far the start of an earlier
        one (a repeat cut short); else None."""
        self._find_boundaries(text)
        if len(self._starts) < 2 or not self._done:
            return None
        start = self._starts[-1]
        current = text[start + len(self.rule.separator):].rstrip()
        return start if any(done.startswith(current) for done in self._done) else None

    def _find_boundaries(self, text: str) -> None:
        while (at := text.find(self._boundary, self._scan)) >= 0:
            if self._starts:
                prev = self._starts[-1]
                skip = len(self.rule.separator) if len(self._starts) > 1 else 0
                self._done.append(text[prev + skip: at].rstrip())
            self._starts.append(at)
            self._scan = at + len(self._boundary)
        self._scan = max(self._scan, len(text) - len(self._boundary) + 1)
