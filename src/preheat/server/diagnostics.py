"""Cache diagnostics: why a request could not reuse an earlier request's prefix.

Every accepted request leaves a fingerprint (digests of its model, tools,
system prompt and turns, and how many tokens it left cached) in a bounded
store keyed by its message id. A request naming ``diagnostics.
previous_message_id`` is compared with that fingerprint in prompt order, and
the first part that diverged is the ``cache_miss_reason``.

A ``context_management`` edit rewrites earlier messages (a cleared tool result), so a
client that only appended turns can still miss: the fingerprint also keeps the messages
as sent, and a ``messages_changed`` caused by an edit names the edits
(``"context_edits": ["clear_tool_uses_20250919"]``, a field beside the SDK's).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from preheat.engine import CacheUsage
from preheat.server.prompt_builder import BuiltPrompt
from preheat.server.protocol import InputMessage


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def message_digests(messages: list[InputMessage]) -> tuple[str, ...]:
    """One digest per message as the client sent it (before any context edit)."""
    return tuple(_digest(m.model_dump_json()) for m in messages)


@dataclass(frozen=True)
class Fingerprint:
    namespace: str
    model: str  # the model that served it (aliases of one model share its cache)
    tools: str
    tool_choice: str
    system: str
    turns: tuple[str, ...]  # complete turns; a trailing prefill is still being written
    cached_tokens: int  # the prefix it left pinned: read + written
    sent: tuple[str, ...] = ()  # the messages as sent, before context edits
    edits: tuple[str, ...] = ()  # the context edits that changed its messages

    @classmethod
    def of(cls, namespace: str, model: str, prompt: BuiltPrompt, cache: CacheUsage,
           sent: tuple[str, ...] = (), edits: tuple[str, ...] = ()) -> Fingerprint:
        turns = prompt.turns[:-1] if prompt.prefill else prompt.turns
        return cls(
            namespace=namespace,
            model=model,
            tools=_digest(prompt.tools_text),
            tool_choice=_digest(prompt.tool_choice_text),
            system=_digest(prompt.system_text),
            turns=tuple(_digest(f"{t.role}\n{t.content}") for t in turns),
            cached_tokens=cache.cache_read_tokens + cache.cache_write_tokens,
            sent=sent,
            edits=edits,
        )


@dataclass(frozen=True)
class CacheMissReason:
    type: str
    cache_missed_input_tokens: int | None = None
    context_edits: tuple[str, ...] = ()  # the edits that changed the messages, if they did

    def to_dict(self) -> dict:
        out: dict = {"type": self.type}
        if self.cache_missed_input_tokens is not None:
            out["cache_missed_input_tokens"] = self.cache_missed_input_tokens
        if self.context_edits:
            out["context_edits"] = list(self.context_edits)
        return out


class DiagnosticsStore:
    """The most recent ``capacity`` fingerprints, by message id."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: OrderedDict[str, Fingerprint] = OrderedDict()

    def record(self, message_id: str, fingerprint: Fingerprint) -> None:
        self._entries[message_id] = fingerprint
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def explain(self, previous_message_id: str, current: Fingerprint,
                cache_read_tokens: int) -> CacheMissReason | None:
        """The first divergence from the previous request, or None if only turns were added.

        A previous request of another API key is "not found": tenants learn
        nothing about each other's prompts.
        """
        previous = self._entries.get(previous_message_id)
        if previous is None or previous.namespace != current.namespace:
            return CacheMissReason("previous_message_not_found")
        missed = max(0, previous.cached_tokens - cache_read_tokens)
        for field, reason in (("model", "model_changed"), ("tools", "tools_changed"),
                              ("system", "system_changed")):
            if getattr(previous, field) != getattr(current, field):
                return CacheMissReason(reason, missed)
        if previous.tool_choice != current.tool_choice:
            # same model, tools and system, but another prompt-affecting parameter changed
            return CacheMissReason("unavailable")
        if current.turns[:len(previous.turns)] != previous.turns:
            return CacheMissReason("messages_changed", missed, _edits_behind(previous, current))
        return None


def _edits_behind(previous: Fingerprint, current: Fingerprint) -> tuple[str, ...]:
    """The context edits that made the prompts differ: the client only appended messages,
    and an edit of either request rewrote some (none: the client changed them itself)."""
    edits = tuple(dict.fromkeys(previous.edits + current.edits))
    appended = bool(previous.sent) and current.sent[:len(previous.sent)] == previous.sent
    return edits if appended else ()
