"""Where a run of tokens occurred before in one token list, and what followed it.

Prompt lookup: a reply that quotes, edits or restates its prompt repeats runs of the
prompt's tokens, and a run that matched the last few tokens so far is likely to go on
as it went on before. The index maps each n-gram (for a few lengths n) to the position
just after its latest occurrence whose continuation is known; it grows as tokens are
appended and never rescans.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def ngrams(tokens: Sequence[int], n: int, lo: int, hi: int) -> Iterator[tuple[tuple[int, ...], int]]:
    """(tokens[end - n:end], end) for end in [lo, hi), in order (zip keeps the loop in C:
    a long prompt is indexed in a few milliseconds)."""
    if hi <= lo:
        return iter(())
    window = tokens[lo - n:hi - 1]
    return zip(zip(*(window[j:] for j in range(n))), range(lo, hi))


def longest_tail(table: Mapping[tuple[int, ...], T], tokens: Sequence[int],
                 lengths: tuple[int, ...]) -> tuple[int, T | None]:
    """(n, ``table``'s entry for ``tokens``' last n tokens) for the first of ``lengths``
    (longest first) that has one; (0, None) when none has."""
    for n in lengths:
        if len(tokens) >= n and (found := table.get(tuple(tokens[-n:]))) is not None:
            return n, found
    return 0, None


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

    def propose(self, tokens: Sequence[int], k: int) -> tuple[int, list[int]]:
        """(match length, up to ``k`` tokens that followed the latest earlier occurrence of
        the longest tail that occurred); (0, []) when none did. (The tail's own n-grams have
        no follower yet, so they are not in the table.)"""
        self.update(tokens)
        n, at = longest_tail(self._after, tokens, self.lengths)
        return (n, list(tokens[at:at + k])) if n else (0, [])
