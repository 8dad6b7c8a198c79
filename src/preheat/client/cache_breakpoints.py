"""Where a multi-turn conversation puts its ``cache_control`` breakpoints: on the system
prompt and on the last two user turns, Anthropic's pattern for conversations."""
from __future__ import annotations

from typing import Any

MAX_BREAKPOINTS = 4  # Anthropic refuses a request with more
MARKED_USER_TURNS = 2  # with the system prompt's, 3 of the 4


def cache_control(ttl: str | None = None) -> dict[str, str]:
    return {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}


def text_block(text: str, cached: bool = False, ttl: str | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if cached:
        block["cache_control"] = cache_control(ttl)
    return block


def with_breakpoints(system: str | None, history: list[dict[str, str]],
                     ttl: str | None = None) -> tuple[list[dict[str, Any]] | None,
                                                      list[dict[str, Any]]]:
    """The request's ``system`` and ``messages`` for ``history`` (``{"role", "content"}``
    with text content, ending with the new user turn).

    The newest user turn's breakpoint writes the conversation so far to the cache; the one
    before it marks where the previous request wrote, so this request reads all of that
    back. The system prompt's own breakpoint keeps it cached when the history changes.
    """
    user_turns = [i for i, message in enumerate(history) if message["role"] == "user"]
    marked = set(user_turns[-MARKED_USER_TURNS:])
    messages = [{"role": message["role"],
                 "content": [text_block(message["content"], i in marked, ttl)]}
                for i, message in enumerate(history)]
    blocks = [text_block(system, True, ttl)] if system else None
    return blocks, messages

