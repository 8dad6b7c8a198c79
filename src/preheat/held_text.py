"""Text that arrives piece by piece: how much of it to hold back while it may still turn
into a marker (a stop sequence for the engine's detokenizer, a tool call's opening for
the API's reply parser). Shared by both sides, so it belongs to neither."""
from __future__ import annotations


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that ``marker`` starts with (short of all of
    it): how much of ``text`` to hold back while it may still grow into ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0
