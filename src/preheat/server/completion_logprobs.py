"""The engine's token logprobs -> OpenAI's legacy ``logprobs`` object of a text completion:
``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``.

A token's text is the tokenizer's decoding of that one id, special tokens by name (an end
of turn reads ``<|im_end|>``; a piece of a character split over tokens reads U+FFFD).
``top_logprobs`` holds the most likely tokens at each position, best first, and the
sampled token when it is not among them (OpenAI's "up to logprobs + 1"); two ids that
decode alike keep the likelier one. ``text_offset`` is where each token's text starts in
the texts of the tokens before it, counted on from one piece of a stream to the next.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from preheat.engine import TokenLogprob
from preheat.server.completions_protocol import Logprobs


@dataclass
class LogprobsWriter:
    """Writes one completion's logprobs, all at once or a piece at a time."""

    decode: Callable[[list[int]], str]  # ids -> text, special tokens by name
    offset: int = 0  # where the next token's text starts
    _texts: dict[int, str] = field(default_factory=dict)

    def write(self, logprobs: Iterable[TokenLogprob]) -> Logprobs:
        """The legacy object for these tokens, which follow those written before."""
        out = Logprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        for entry in logprobs:
            text = self.text(entry.token_id)
            top: dict[str, float] = {}
            for token_id, logprob in entry.top:
                top.setdefault(self.text(token_id), logprob)
            top.setdefault(text, entry.logprob)
            out.tokens.append(text)
            out.token_logprobs.append(entry.logprob)
            out.top_logprobs.append(top)
            out.text_offset.append(self.offset)
            self.offset += len(text)
        return out

    def text(self, token_id: int) -> str:
        if token_id not in self._texts:
            self._texts[token_id] = self.decode([token_id])
        return self._texts[token_id]
