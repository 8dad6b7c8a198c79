"""Where a run of tokens occurred before in one token list, and what followed it.

Prompt lookup: a reply that quotes, edits or restates its prompt repeats runs of the
prompt's tokens, and a run that matched the last few tokens so far is likely to go on
as it went on before. The index maps each n-gram (for a few lengths n) to the position
just after its latest occurrence whose continuation is known; it grows as tokens are
appended and never rescans.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence


def ngrams(tokens: Sequence[int], n: int, lo: int, hi: int) -> Iterator[tuple[tuple[int, ...], int]]:
    """(tokens[end - n:end], end) for end in [lo, hi), in order (zip keeps the loop in C:
    a long prompt is indexed in a few milliseconds)."""
    if hi <= lo:
        return iter(())
    window = tokens[lo - n:hi - 1]
    return zip(zip(*(window[j:] for j in range(n))), range(lo, hi))


class NgramIndex:
    """Latest occurrence of each n-gram of ``tokens`` (``lengths`` n, longest first)."""

    def __init__(self, lengths: tuple[int, ...] = (4, 3, 2)):
        self.lengths = tuple(sorted(lengths, reverse=True))
        self._after: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after it
        self._indexed = 0  # n-grams ending before this index are in the table

    def update(self, tokens: Sequence[int]) -> None:
        """Index the n-grams of ``tokens`` (the same list, grown) that have a follower."""
        for n in self.lengths:
            self._after.update(ngrams(tokens, n, max(self._indexed, n), len(tokens)))
        self._indexed = max(self._indexed, len(tokens))

    def match(self, tokens: Sequence[int]) -> tuple[int, int]:
        """(n, position after the latest earlier occurrence of ``tokens``' last n tokens) for
        the longest n that occurred; (0, -1) when none did."""
        for n in self.lengths:
            if len(tokens) > n and (at := self._after.get(tuple(tokens[-n:]))) is not None:
                return n, at
        return 0, -1

    def propose(self, tokens: Sequence[int], k: int) -> tuple[int, list[int]]:
        """(match length, up to ``k`` tokens that followed the tail's latest occurrence)."""
        self.update(tokens)
        n, at = self.match(tokens)
        return (n, list(tokens[at:at + k])) if n else (0, [])
