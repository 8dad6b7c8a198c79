"""How much batch work one engine step may carry while interactive users are about.

A step cannot be interrupted: an interactive request that arrives while a step of batch
work runs waits for it to end before its own prefill starts. On a machine where sixteen
batch items at a long context take most of a second a step, that wait is the user's
TTFT. So for a while after interactive work was last seen (``recent_s``), steps holding
only background work get a token budget sized so that they take about as long as the
interactive steps do (their running mean, and at least ``floor_s``): the wait then adds
at most about one of the user's own steps. The budget is halved after a step that took
longer and grown by a quarter after one that took under half of it. With no interactive
user about for ``recent_s``, batch work gets the whole step budget again: throughput is
all that matters then.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

RECENT_S = 30.0  # how long after interactive work the next may be expected
SMOOTHING = 0.1  # weight of the newest interactive step in the running mean


@dataclass
class BackgroundPacer:
    full_budget: int  # the step's token budget without pacing
    floor_s: float  # the least a step of batch work may take while pacing (< 0: no pacing)
    recent_s: float = RECENT_S
    clock: Callable[[], float] = time.monotonic
    cap: int = field(init=False)  # the budget of a background step while pacing
    interactive_step_s: float = field(default=0.0, init=False)  # their running mean
    _interactive_at: float = field(default=-math.inf, init=False)

    def __post_init__(self) -> None:
        self.cap = self.full_budget

    @property
    def target_s(self) -> float:
        return max(self.floor_s, self.interactive_step_s)

    def saw_interactive(self) -> None:
        self._interactive_at = self.clock()

    @property
    def pacing(self) -> bool:
        return self.floor_s >= 0 and self.clock() - self._interactive_at < self.recent_s

    def budget(self) -> int:
        """The token budget of a step that holds background work only."""
        return self.cap if self.pacing else self.full_budget

    def observe_interactive(self, seconds: float) -> None:
        """A step with interactive work in it took ``seconds``."""
        mean = self.interactive_step_s
        self.interactive_step_s = seconds if mean == 0 else mean + SMOOTHING * (seconds - mean)

    def observe_background(self, tokens: int, seconds: float) -> None:
        """A step of ``tokens`` background tokens (and nothing else) took ``seconds``."""
        if not self.pacing:
            return
        if seconds > self.target_s:
            self.cap = max(1, min(self.cap, tokens) // 2)
        elif seconds < self.target_s / 2 and tokens >= self.cap:
            self.cap = min(self.full_budget, max(self.cap + 1, self.cap * 5 // 4))
