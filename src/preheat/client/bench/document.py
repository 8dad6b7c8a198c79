"""A long document cut to a token budget, counted by the server's own tokenizer."""
from __future__ import annotations

from collections.abc import Callable

SHRINK = 0.95  # each retry keeps this share of the previous cut


def fit_document(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest prefix of ``text``, cut at whitespace, that ``count`` puts at no more
    than ``budget`` tokens (a first cut in proportion, then shorter ones until it fits)."""
    total = count(text)
    if total <= budget:
        return text
    keep = int(len(text) * budget / total)
    while keep > 0:
        candidate = _cut(text, keep)
        if count(candidate) <= budget:
            return candidate
        keep = min(int(keep * SHRINK), len(candidate) - 1)
    return ""


def _cut(text: str, chars: int) -> str:
    """The first ``chars`` characters, less a trailing partial word."""
    head = text[:chars]
    if chars < len(text) and not text[chars].isspace() and not head[-1:].isspace():
        words = head.rsplit(None, 1)
        head = words[0] if len(words) == 2 else ""
    return head.rstrip()
