"""A reply's token counts as Anthropic's ``usage`` reports them, with the 5-minute and
1-hour cache writes apart (they are priced differently)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenUsage:
    """Token counts of one request, or the sum of several."""

    input_tokens: int = 0  # prompt tokens neither read from nor written to the cache
    cache_read_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0

    @classmethod
    def from_sdk(cls, usage: Any) -> TokenUsage:
        """From an SDK ``Usage``; writes without a TTL breakdown count as 5-minute writes."""
        written = usage.cache_creation_input_tokens or 0
        one_hour = usage.cache_creation.ephemeral_1h_input_tokens if usage.cache_creation else 0
        return cls(input_tokens=usage.input_tokens,
                   cache_read_input_tokens=usage.cache_read_input_tokens or 0,
                   cache_write_5m_tokens=written - one_hour, cache_write_1h_tokens=one_hour,
                   output_tokens=usage.output_tokens)

    @property
    def cache_creation_input_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt: uncached, read and written tokens together."""
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens

    @property
    def cached_share(self) -> float:
        """The share of the prompt read from the cache (0 for an empty prompt)."""
        return self.cache_read_input_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(self.input_tokens + other.input_tokens,
                          self.cache_read_input_tokens + other.cache_read_input_tokens,
                          self.cache_write_5m_tokens + other.cache_write_5m_tokens,
                          self.cache_write_1h_tokens + other.cache_write_1h_tokens,
                          self.output_tokens + other.output_tokens)

    def as_dict(self) -> dict[str, Any]:
        """Anthropic's field names, plus the prompt's size and its cached share."""
        return {
            "input_tokens": self.input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": self.cache_write_5m_tokens,
                               "ephemeral_1h_input_tokens": self.cache_write_1h_tokens},
            "output_tokens": self.output_tokens,
            "prompt_tokens": self.prompt_tokens,
            "cached_share": self.cached_share,
        }


def total_usage(usages: list[TokenUsage]) -> TokenUsage:
    return sum(usages, TokenUsage())
