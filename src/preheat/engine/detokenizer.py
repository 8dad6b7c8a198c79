"""Token ids -> text deltas that are always whole characters, with stop strings.

Byte-level BPE can split one UTF-8 character over several tokens; decoding a
partial character yields U+FFFD, so text is only released once it decodes
cleanly. Stop strings can straddle token boundaries, so any tail of the text
that could still grow into a stop string is held back until it can't. A
``RepeatGuard`` (see ``repeat_guard.py``) holds back a segment while it may be
a repeat, and ends the reply before one that is.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import TYPE_CHECKING

from preheat.held_text import partial_suffix

if TYPE_CHECKING:
    from preheat.engine.repeat_guard import RepeatGuard

# Prompt tokens decoded as context so the first output token gets its leading
# space right under tokenizers whose decoders strip it at the start of a string.
_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[list[int]], str], prompt_ids: list[int],
                 stop: tuple[str, ...] = (), guard: RepeatGuard | None = None):
        self._decode = decode
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)
        self._stops = tuple(s for s in stop if s)
        self._guard = guard
        self._ends: list[int] = []  # with a guard, per token pushed: the text's length so far
        self._pending = ""  # decoded text not yet released
        self.text = ""  # everything released so far
        self.stop_sequence: str | None = None
        # set when the guard ended the reply: how many of the tokens pushed it keeps
        self.kept_tokens: int | None = None

    def push(self, token_id: int) -> str:
        """Add a token; returns newly releasable text (maybe empty)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix: self._read])
        after = self._decode(self._ids[self._prefix:])
        grew = len(after) > len(before) and not after.endswith("\ufffd")
        if grew:
            self._prefix, self._read = self._read, len(self._ids)
            # Keep the window short: decode cost stays constant per token.
            self._pending += after[len(before):]
        if self._guard is not None:
            self._ends.append(len(self.text) + len(self._pending))
        return self._release() if grew else ""

    def flush(self) -> str:
        """Release what was held back (the request ended without a stop string). A segment
        the guard holds as the start of a repeat is not released: the reply ends before it
        (``repeated``), as it would have once the repeat was whole."""
        if self._guard is not None:
            start = self._guard.repeating(self.text + self._pending)
            if start is not None:
                return self._end_before(start)
        out, self._pending = self._pending, ""
        self.text += out
        return out

    @property
    def repeated(self) -> bool:
        """The guard ended the reply (before a repeated segment)."""
        return self.kept_tokens is not None

    def _release(self) -> str:
        if not self._stops and self._guard is None:
            return self.flush()
        hits = [(i, s) for s in self._stops if (i := self._pending.find(s)) >= 0]
        if hits:
            cut, self.stop_sequence = min(hits)
            out, self._pending = self._pending[:cut], ""
            self.text += out
            return out
        cut = len(self._pending) - (self._longest_stop_prefix_suffix() if self._stops else 0)
        if self._guard is not None:
            verdict = self._guard.check(self.text + self._pending)
            if verdict.repeat_at is not None:
                return self._end_before(verdict.repeat_at)
            cut = min(cut, verdict.hold_from - len(self.text))
        out = self._pending[:cut]
        self._pending = self._pending[cut:]
        self.text += out
        return out

    def _end_before(self, at: int) -> str:
        """The reply ends at ``at`` (in the text decoded so far): release what precedes it."""
        self.kept_tokens = bisect.bisect_right(self._ends, at)
        out, self._pending = self._pending[:at - len(self.text)], ""
        self.text += out
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        return max(partial_suffix(self._pending, s) for s in self._stops)
