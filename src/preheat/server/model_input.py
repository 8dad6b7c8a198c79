"""What of a request the model reads: some of what today's clients send is not for it.

- Claude Code sends a billing header as its first system block
  (``x-anthropic-billing-header: cc_version=...; cc_entrypoint=...;``, some versions with a
  per-request ``cch=`` nonce). It is accounting for Anthropic's side, and a nonce in it
  would make every prompt new to the cache: it is left out (one that carries a
  ``cache_control`` breakpoint stays, so the request's breakpoints are the ones it asked for).
- ``document``, ``search_result`` and ``image`` blocks become the text the model reads
  (``documents.py``).
- ``thinking`` and ``redacted_thinking`` blocks of earlier turns are sent back by clients
  that keep a reply whole; Anthropic leaves earlier turns' thinking out of the context, and
  so does this server (its model writes none of its own).

``count_tokens`` and ``/v1/messages`` both read the request through ``model_input``, so
they agree.
"""
from __future__ import annotations

from typing import TypeVar

from preheat.server.documents import DocumentReader
from preheat.server.protocol import (PromptRequest, RedactedThinkingBlock, TextBlock,
                                     ThinkingBlock)

BILLING_HEADER = "x-anthropic-billing-header:"

Request = TypeVar("Request", bound=PromptRequest)


def model_input(request: Request, documents: DocumentReader) -> Request:
    """``request`` as the model reads it (itself when that is what it is): documents as
    text, without what is not model input. Blocking (a PDF is parsed): run it off the loop."""
    system = [b for b in request.system if not is_billing_header(b)]
    messages = [m.model_copy(update={"content": kept}) if kept is not m.content else m
                for i, m in enumerate(request.messages)
                if (kept := _read(m.content, f"messages.{i}.content", documents))
                or not m.content]
    unchanged = len(messages) == len(request.messages) and all(
        a is b for a, b in zip(messages, request.messages))
    if unchanged and len(system) == len(request.system):
        return request
    return request.model_copy(update={"system": system, "messages": messages})


def is_billing_header(block: TextBlock) -> bool:
    return block.cache_control is None and block.text.startswith(BILLING_HEADER)


def _read(content: list, where: str, documents: DocumentReader) -> list:
    kept = [b for b in content if not _is_thinking(b)]
    return documents.read_content(content if len(kept) == len(content) else kept, where)


def _is_thinking(block: object) -> bool:
    return isinstance(block, (ThinkingBlock, RedactedThinkingBlock))
