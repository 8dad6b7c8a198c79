"""What tokens cost at a price table, with Anthropic's prompt-caching multipliers."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from preheat.client.token_usage import TokenUsage

# Claude Sonnet 4.6's list prices, $ per million tokens.
DEFAULT_INPUT_PRICE = 3.0
DEFAULT_OUTPUT_PRICE = 15.0


@dataclass(frozen=True)
class PriceTable:
    """Base prices in $ per million tokens; cache writes and reads are priced as multiples
    of the input price (Anthropic: 1.25x for a 5-minute write, 2x for 1 hour, 0.1x a read),
    and a batch's tokens at a multiple of what they cost sent alone."""

    input_per_mtok: float = DEFAULT_INPUT_PRICE
    output_per_mtok: float = DEFAULT_OUTPUT_PRICE
    cache_write_5m_multiplier: float = 1.25
    cache_write_1h_multiplier: float = 2.0
    cache_read_multiplier: float = 0.1
    batch_multiplier: float = 0.5  # a Message Batch's tokens, all kinds (Anthropic: half price)

    def cost(self, usage: TokenUsage) -> float:
        """Dollars for ``usage`` as billed with caching."""
        prompt_units = (usage.input_tokens
                        + usage.cache_write_5m_tokens * self.cache_write_5m_multiplier
                        + usage.cache_write_1h_tokens * self.cache_write_1h_multiplier
                        + usage.cache_read_input_tokens * self.cache_read_multiplier)
        return self._dollars(prompt_units, usage.output_tokens)

    def cost_without_cache(self, usage: TokenUsage) -> float:
        """Dollars for the same tokens had no request asked for caching: all input at the
        base price."""
        return self._dollars(usage.prompt_tokens, usage.output_tokens)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def _dollars(self, prompt_units: float, output_tokens: int) -> float:
        return (prompt_units * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6
