"""What the engine streams back for one request."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class StopReason(str, enum.Enum):
    EOS = "eos"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"
    CONTEXT_WINDOW = "context_window"
    ABORTED = "aborted"


@dataclass(frozen=True)
class CacheUsage:
    """Prompt accounting in Anthropic's terms.

    ``cache_read_tokens`` came from a pinned prefix, ``cache_write_tokens`` were
    newly pinned by this request; the rest is plain input.
    """

    prompt_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # ttl in seconds -> tokens written under that ttl; values sum to cache_write_tokens
    cache_write_by_ttl: dict[float, int] = field(default_factory=dict)

    @property
    def input_tokens(self) -> int:
        return self.prompt_tokens - self.cache_read_tokens - self.cache_write_tokens


@dataclass(frozen=True)
class Started:
    """First event of every request: its prompt accounting, known at submit."""

    usage: CacheUsage


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability under the model's own distribution (the
    log-softmax of its logits, before temperature, top-k/top-p or a grammar), and the
    ``top`` most likely tokens there as (token id, logprob), best first. Reported only for
    requests whose ``SamplingParams.logprobs`` asks."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """New text; ``output_tokens`` is the cumulative count of generated tokens.

    ``logprobs``: for a request that asks, those of the tokens generated since the last
    event that carried some (a token whose text is still held back is reported with the
    text that follows it, or with ``Finished``)."""

    text: str
    output_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    """Last event of a request."""

    stop_reason: StopReason
    stop_sequence: str | None
    usage: CacheUsage
    output_tokens: int
    output_ids: list[int]
    text: str
    # prompt tokens whose KV the cache already had when the request was admitted (pinned,
    # held for a conversation, or shared with an earlier prompt): what was not prefilled.
    # ``usage`` stays Anthropic's, which counts reads of pinned prefixes only.
    reused_prompt_tokens: int = 0
    # for a request that asks: logprobs of the tokens no ``TextDelta`` carried (an EOS
    # token, text held back until the end), so the request's events report each token once
    logprobs: tuple[TokenLogprob, ...] = ()


EngineEvent = Started | TextDelta | Finished
