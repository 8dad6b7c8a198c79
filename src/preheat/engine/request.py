"""What a caller hands the engine: prompt tokens, sampling, cache breakpoints."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DistinctSegments:
    """The reply holds segments that must differ (tool calls): the first starts at
    ``opening``, each later one at ``separator + opening``. A segment that repeats an
    earlier one ends the reply before it, as a natural end: a model that would start the
    same call again has said all it has to say. See ``repeat_guard.py``."""

    opening: str
    separator: str


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` means greedy.

    ``max_tokens == 0`` is a pre-warm: the prompt is prefilled (and its
    breakpoints pinned) but nothing is generated.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0  # 0 disables top-k
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    # llguidance grammar text (Lark, inline %json schemas) the output must match; see grammar.py
    grammar: str | None = None
    distinct_segments: DistinctSegments | None = None
    # report each generated token's logprob and this many of the most likely tokens beside
    # it (see output.TokenLogprob); None reports nothing and costs nothing
    logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def filters(self) -> bool:
        """Top-k or top-p trims the distribution before sampling."""
        return 0 < self.top_k or self.top_p < 1.0


@dataclass(frozen=True)
class CacheBreakpoint:
    """Pin ``prompt_ids[:position]`` in the prefix cache for ``ttl`` seconds."""

    position: int
    ttl: float


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    # Prefixes are only ever shared inside one namespace (the API uses one per API key).
    namespace: str = ""
    breakpoints: tuple[CacheBreakpoint, ...] = ()
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # after the reply, hold its KV (prompt and reply) in the cache this long, unreported,
    # for a follow-up that starts with both (a message thread's next turn)
    hold_seconds: float = 0.0
    # where later requests are likely to part from this prompt (the end of its system
    # prompt): with sliding-window layers the cache keeps a window there too, so they can
    # resume from it without a breakpoint (nothing is pinned or reported)
    resume_points: tuple[int, ...] = ()
    # batch work: it runs only while no interactive request is waiting or running, is
    # preempted first, and is never refused for a full queue (its runner bounds it)
    background: bool = False
    # may be sped up by speculative decoding (its tokens are the same either way)
    speculative: bool = True
