"""Message threads (beta ``message-threads-2026-08-12``): conversations the server holds.

Each stored response is one ``ThreadTurn``: its ``HeldHistory``, everything needed to
continue from it (system, tools, the messages so far with the reply appended, and the
exact token ids of that prompt and reply). A continue takes the turn it names, and the response it
produces is stored as the next turn. Turns live per tenant, for ``ttl`` seconds after
they are stored, within caps on their number and tokens (the oldest go first). A
dropped or expired turn is simply not found, which the SDK answers by replaying the
conversation under a new thread.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from preheat.server.errors import InvalidRequestError, NotFoundError
from preheat.server.held_history import HeldHistory
from preheat.server.protocol import MessagesRequest

THREADS_BETA = "message-threads-2026-08-12"


def thread_error(code: str, message: str, **details) -> InvalidRequestError | NotFoundError:
    """An error the SDK recognises by ``error.details.error_code``."""
    kind = NotFoundError if code == "thread_not_found" else InvalidRequestError
    return kind(message, details={"error_code": code, **details})


@dataclass
class ThreadTurn:
    """A stored response that a request may continue from."""

    message_id: str
    namespace: str
    history: HeldHistory | None  # None once continued: its history lives on in the next turn
    stored_at: float
    continued: bool = False
    in_flight: bool = False  # a continue from it is running

    @property
    def tokens(self) -> int:
        """Tokens it holds (what the per-tenant cap counts)."""
        return 0 if self.history is None else len(self.history.token_ids)


@dataclass
class ThreadStore:
    ttl: float = 300.0  # seconds a turn may be continued after it is stored
    max_turns: int = 256  # live turns per tenant
    max_tokens: int = 2_000_000  # tokens of live turns per tenant
    clock: Callable[[], float] = time.monotonic
    _tenants: dict[str, OrderedDict[str, ThreadTurn]] = field(default_factory=dict)

    def begin(self, request: MessagesRequest, namespace: str) -> ThreadTurn | None:
        """For a continue, the turn it goes on from (in flight from now); None for a
        request that continues nothing. Requests a thread can't hold are refused here."""
        if request.thread is None:
            return None
        unsupported = [why for why, applies in (
            ("prefill", request.messages[-1].role == "assistant"),
            ("pre-warm", request.max_tokens == 0)) if applies]
        if unsupported:
            raise thread_error("thread_unsupported_request", "thread: these requests can't be "
                               f"threaded: {', '.join(unsupported)}", unsupported=unsupported)
        if request.thread.type == "create":
            return None
        repeated = [name for name in ("system", "tools") if getattr(request, name)]
        if repeated:
            raise InvalidRequestError(f"{repeated[0]}: a thread continue leaves out system and "
                                      "tools: the thread keeps them")
        return self.begin_continue(namespace, request.thread.previous_message_id)

    def record(self, message_id: str, namespace: str, history: HeldHistory) -> None:
        """Store a threaded request's response (the conversation it ends) as a turn to
        continue from."""
        self.store(ThreadTurn(message_id, namespace, history, stored_at=self.clock()))

    def begin_continue(self, namespace: str, message_id: str) -> ThreadTurn:
        """The turn to continue from, now marked in flight; the thread errors otherwise."""
        turns = self._live(namespace)
        turn = turns.get(message_id)
        if turn is None:
            raise thread_error("thread_not_found", f"thread: no thread to continue from "
                               f"{message_id!r}: it is unknown, expired or another key's")
        if turn.continued:
            raise thread_error("thread_already_continued", f"thread: {message_id!r} was "
                               "already continued; continue from the latest response")
        if turn.in_flight:
            raise thread_error("thread_continue_in_flight", f"thread: a continue from "
                               f"{message_id!r} is still running")
        turn.in_flight = True
        return turn

    def end_continue(self, turn: ThreadTurn, succeeded: bool) -> None:
        """A continue from ``turn`` ended; once one succeeds, ``turn`` is spent."""
        turn.in_flight = False
        if succeeded:
            # kept until it expires, to say "already continued"
            turn.continued = True
            turn.history = None

    def store(self, turn: ThreadTurn) -> None:
        turns = self._live(turn.namespace)
        turns[turn.message_id] = turn
        while len(turns) > self.max_turns or (
                len(turns) > 1 and sum(t.tokens for t in turns.values()) > self.max_tokens):
            turns.popitem(last=False)

    def _live(self, namespace: str) -> OrderedDict[str, ThreadTurn]:
        """The tenant's turns, oldest first, expired ones dropped."""
        turns = self._tenants.setdefault(namespace, OrderedDict())
        now = self.clock()
        while turns:
            oldest = next(iter(turns.values()))
            if oldest.stored_at + self.ttl > now or oldest.in_flight:
                break
            turns.popitem(last=False)
        return turns
