"""Message threads (beta ``message-threads-2026-08-12``): conversations the server holds.

Each stored response is one ``ThreadTurn``: everything needed to continue from it
(system, tools, the messages so far with the reply appended, and the exact token ids
of that prompt and reply). A continue takes the turn it names, and the response it
produces is stored as the next turn. Turns live per tenant, for ``ttl`` seconds after
they are stored, within caps on their number and tokens (the oldest go first). A
dropped or expired turn is simply not found, which the SDK answers by replaying the
conversation under a new thread.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from preheat.server.errors import InvalidRequestError, NotFoundError
from preheat.server.prompt_builder import BuiltPrompt, PromptBlock
from preheat.server.protocol import InputMessage, MessagesRequest, TextBlock, Tool

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
    system: list[TextBlock]
    tools: list[Tool]
    messages: list[InputMessage]  # the whole conversation, this response last
    token_ids: list[int]  # its prompt, then its reply as generated (no end-of-turn token)
    blocks: list[PromptBlock]  # one per content block of ``messages``, marks removed
    stored_at: float
    continued: bool = False
    in_flight: bool = False  # a continue from it is running


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

    def record(self, message_id: str, namespace: str, request: MessagesRequest,
               prompt: BuiltPrompt, reply: list[dict], reply_ids: list[int]) -> None:
        """Store a threaded request's response as a turn to continue from.

        ``request`` is the whole conversation it answered (a continue's included) and
        ``reply_ids`` the reply's tokens as generated, without an end-of-turn token.
        """
        # Kept as generated, whitespace-only text included: a reply the API would refuse
        # in a replayed history still continues here, from its exact tokens. An empty reply
        # is one empty text block, so the history's last block has a place.
        reply = reply or [{"type": "text", "text": ""}]
        token_ids = prompt.token_ids + reply_ids
        self.store(ThreadTurn(
            message_id=message_id, namespace=namespace, system=request.system,
            tools=request.tools,
            messages=[*request.messages,
                      InputMessage.model_validate({"role": "assistant", "content": reply})],
            token_ids=token_ids,
            # the history's marks were the earlier requests': a continue brings its own
            blocks=[replace(b, cache_control=None) for b in prompt.blocks]
            + [PromptBlock("messages", len(token_ids), None)] * len(reply),
            stored_at=self.clock()))

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
            # kept until it expires, to say "already continued"; its history lives on in
            # the next turn
            turn.continued = True
            turn.messages, turn.token_ids, turn.blocks = [], [], []

    def store(self, turn: ThreadTurn) -> None:
        turns = self._live(turn.namespace)
        turns[turn.message_id] = turn
        while len(turns) > self.max_turns or (
                len(turns) > 1 and sum(len(t.token_ids) for t in turns.values()) > self.max_tokens):
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
