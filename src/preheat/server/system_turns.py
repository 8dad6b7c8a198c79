"""System messages inside the conversation (the current SDK's ``SystemMessageParam``).

Claude Code ends its requests with one after the user's turn. Each is rendered at its
place: as the chat template's own system turn where the template takes one there, and
otherwise (a template that drops a system message past the first, or refuses it) folded
into the nearest user turn as a clearly delimited instruction. Either way its blocks are
ordinary message blocks: they end where they end, and may carry cache breakpoints.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Piece = TypeVar("Piece")

OPEN = "<system>"
CLOSE = "</system>"


def fold_system_turns(chat: list[tuple[str, list[Piece]]],
                      wrap: Callable[[list[Piece]], list[Piece]]) -> list[tuple[str, list[Piece]]]:
    """``chat`` with every system turn after the first turn folded into a user turn:
    ``wrap(pieces)`` delimits its pieces, which join the user turn before it (a system
    message after the user's turn, as Claude Code sends it), else the one after it, else
    stand as a user turn of their own."""
    out: list[tuple[str, list[Piece]]] = []
    pending: list[Piece] = []  # folded instructions waiting for the next user turn
    for i, (role, pieces) in enumerate(chat):
        if role == "system" and i > 0:
            if out and out[-1][0] == "user":
                out[-1] = ("user", [*out[-1][1], *wrap(pieces)])
            else:
                pending += wrap(pieces)
            continue
        if role == "user" and pending:
            pieces, pending = [*pending, *pieces], []
        out.append((role, list(pieces)))
    if pending:
        out.append(("user", pending))
    return merge_roles(out)


def merge_roles(chat: list[tuple[str, list[Piece]]]) -> list[tuple[str, list[Piece]]]:
    """Consecutive turns of one role as one turn."""
    out: list[tuple[str, list[Piece]]] = []
    for role, pieces in chat:
        if out and out[-1][0] == role:
            out[-1] = (role, [*out[-1][1], *pieces])
        else:
            out.append((role, list(pieces)))
    return out
