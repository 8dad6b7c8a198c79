"""How much batch work one engine step may carry while interactive users are about.

An interactive request that arrives while a step of batch work runs waits for the
stretch of it under way: the whole step where steps cannot be stopped, one layer where a
step of batch work stops between layers for a newcomer (``interactive_arrivals.py``).
On a machine where sixteen batch items' prompts at a long context take a second a step,
a thirtieth of that is still the user's TTFT doubled. So for a while after interactive
work was last seen (``recent_s``), steps holding only background work get a token budget
sized so that one stretch (``step time / stretches``) takes about a quarter of an
interactive step (their running mean; at least ``floor_s``): the wait then adds at most
about a quarter of one of the user's own steps. The budget is halved after a step whose
stretch took longer and grown by a quarter after one whose stretch took under half of
it. Decode steps, a row per sequence, rarely meet the bound where steps stop between
layers; steps that prefill many items' prompts do. With no interactive user about for
``recent_s``, batch work gets the whole step budget again: throughput is all that
matters then.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

RECENT_S = 30.0  # how long after interactive work the next may be expected
SMOOTHING = 0.1  # weight of the newest interactive step in the running mean
WAIT_SHARE = 0.25  # of an interactive step: the longest stretch of batch work a newcomer waits for


@dataclass
class BackgroundPacer:
    full_budget: int  # the step's token budget without pacing
    floor_s: float  # the least a stretch of batch work may take while pacing (< 0: no pacing)
    stretches: int = 1  # the parts a step runs in, a stop possible between them (its layers)
    recent_s: float = RECENT_S
    clock: Callable[[], float] = time.monotonic
    cap: int = field(init=False)  # the budget of a background step while pacing
    interactive_step_s: float = field(default=0.0, init=False)  # their running mean
    _interactive_at: float = field(default=-math.inf, init=False)

    def __post_init__(self) -> None:
        self.cap = self.full_budget

    @property
    def target_s(self) -> float:
        return max(self.floor_s, WAIT_SHARE * self.interactive_step_s)

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
        stretch = seconds / self.stretches
        if stretch > self.target_s:
            self.cap = max(1, min(self.cap, tokens) // 2)
        elif stretch < self.target_s / 2 and tokens >= self.cap:
            self.cap = min(self.full_budget, max(self.cap + 1, self.cap * 5 // 4))
