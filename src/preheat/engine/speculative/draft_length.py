"""How many tokens to draft for one sequence next, from how its drafts fared.

A verified draft costs a row of the forward pass per token whether it is accepted or
not; a sequence that copies its prompt accepts long drafts, one writing free text
accepts few. The length doubles after a draft accepted whole and falls to just past
what was accepted otherwise; drafts that keep failing outright pause drafting for a
while, the pause doubling each time, so free text costs next to nothing.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DraftLength:
    limit: int  # the longest draft (--speculative-tokens)
    length: int = 4
    misses: int = 0  # drafts in a row with nothing accepted
    pause: int = 0  # steps left without drafting
    next_pause: int = 8

    MISSES_BEFORE_PAUSE = 3
    LONGEST_PAUSE = 256

    def __post_init__(self) -> None:
        self.length = min(self.length, self.limit)

    def allowed(self) -> int:
        """Tokens the next draft may have (0 while paused); counts a paused step."""
        if self.pause > 0:
            self.pause -= 1
            return 0
        return self.length

    def observe(self, drafted: int, accepted: int) -> None:
        if accepted == drafted:
            self.length = min(self.limit, 2 * self.length)
        else:
            self.length = max(2, min(self.limit, accepted + 1))
        if accepted > 0:
            self.misses, self.next_pause = 0, 8
            return
        self.misses += 1
        if self.misses >= self.MISSES_BEFORE_PAUSE:
            self.pause, self.misses = self.next_pause, 0
            self.next_pause = min(self.LONGEST_PAUSE, 2 * self.next_pause)
