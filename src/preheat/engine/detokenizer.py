"""Token ids -> text deltas that are always whole characters, with stop strings.

Byte-level BPE can split one UTF-8 character over several tokens; decoding a
partial character yields U+FFFD, so text is only released once it decodes
cleanly. Stop strings can straddle token boundaries, so any tail of the text
that could still grow into a stop string is held back until it can't.
"""
from __future__ import annotations

from collections.abc import Callable

# Prompt tokens decoded as context so the first output token gets its leading
# space right under tokenizers whose decoders strip it at the start of a string.
_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[list[int]], str], prompt_ids: list[int],
                 stop: tuple[str, ...] = ()):
        self._decode = decode
        self._ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)
        self._stops = tuple(s for s in stop if s)
        self._pending = ""  # decoded text not yet released
        self.text = ""  # everything released so far
        self.stop_sequence: str | None = None

    def push(self, token_id: int) -> str:
        """Add a token; returns newly releasable text (maybe empty)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix: self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        # Keep the window short: decode cost stays constant per token.
        self._pending += after[len(before):]
        return self._release()

    def flush(self) -> str:
        """Release what was held back (the request ended without a stop string)."""
        out, self._pending = self._pending, ""
        self.text += out
        return out

    def _release(self) -> str:
        if not self._stops:
            return self.flush()
        hits = [(i, s) for s in self._stops if (i := self._pending.find(s)) >= 0]
        if hits:
            cut, self.stop_sequence = min(hits)
            out, self._pending = self._pending[:cut], ""
        else:
            hold = self._longest_stop_prefix_suffix()
            out = self._pending[: len(self._pending) - hold]
            self._pending = self._pending[len(out):]
        self.text += out
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        return max(partial_suffix(self._pending, s) for s in self._stops)


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that ``marker`` starts with (short of all of
    it): how much of ``text`` to hold back while it may still grow into ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0
