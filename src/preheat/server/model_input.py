"""What of a request the model reads: some of what today's clients send is not for it.

- Claude Code sends a billing header as its first system block
  (``x-anthropic-billing-header: cc_version=...; cc_entrypoint=...;``, some versions with a
  per-request ``cch=`` nonce). It is accounting for Anthropic's side, and a nonce in it
  would make every prompt new to the cache: it is left out (one that carries a
  ``cache_control`` breakpoint stays, so the request's breakpoints are the ones it asked for).
- ``document``, ``search_result`` and ``image`` blocks become the text the model reads
  (``documents.py``).
- ``thinking`` and ``redacted_thinking`` blocks of earlier turns are sent back by clients
  that keep a reply whole. For a model without a reasoning format they are left out (it
  writes none of its own). For one with it, a thinking block must carry this server's
  signature (else a 400, as Anthropic answers a tampered block) and is kept, its text
  restored from the signature where its display was omitted; ``clear_thinking_20251015``
  decides which turns keep theirs. ``redacted_thinking`` is never this server's: left out.

``count_tokens`` and ``/v1/messages`` both read the request through ``model_input``, so
they agree.
"""
from __future__ import annotations

from typing import TypeVar

from preheat.server.documents import DocumentReader
from preheat.server.errors import InvalidRequestError
from preheat.server.protocol import (PromptRequest, RedactedThinkingBlock, TextBlock,
                                     ThinkingBlock)
from preheat.server.reasoning import ThinkingSigner

BILLING_HEADER = "x-anthropic-billing-header:"

Request = TypeVar("Request", bound=PromptRequest)


def model_input(request: Request, documents: DocumentReader,
                signer: ThinkingSigner | None = None) -> Request:
    """``request`` as the model reads it (itself when that is what it is): documents as
    text, without what is not model input; ``signer`` is the server's when its model
    thinks. Blocking (a PDF is parsed): run it off the loop."""
    system = [b for b in request.system if not is_billing_header(b)]
    messages = [m.model_copy(update={"content": kept}) if kept is not m.content else m
                for i, m in enumerate(request.messages)
                if (kept := _read(m.content, f"messages.{i}.content", documents, signer))
                or not m.content]
    unchanged = len(messages) == len(request.messages) and all(
        a is b for a, b in zip(messages, request.messages))
    if unchanged and len(system) == len(request.system):
        return request
    return request.model_copy(update={"system": system, "messages": messages})


def is_billing_header(block: TextBlock) -> bool:
    return block.cache_control is None and block.text.startswith(BILLING_HEADER)


def _read(content: list, where: str, documents: DocumentReader,
          signer: ThinkingSigner | None) -> list:
    if any(_is_thinking(b) for b in content):
        content = [_verified(b, f"{where}.{j}", signer) if isinstance(b, ThinkingBlock) else b
                   for j, b in enumerate(content)
                   if not isinstance(b, RedactedThinkingBlock)
                   and not (signer is None and isinstance(b, ThinkingBlock))]
    return documents.read_content(content, where)


def _verified(block: ThinkingBlock, where: str, signer: ThinkingSigner) -> ThinkingBlock:
    """The block as its signature says it was written; a 400 if it is not this server's."""
    thinking = signer.read(block.signature)
    if thinking is None or (block.thinking and block.thinking != thinking):
        raise InvalidRequestError(f"{where}: Invalid `signature` in `thinking` block: it was "
                                  "not made by this server for this thinking")
    return block if block.thinking == thinking else block.model_copy(
        update={"thinking": thinking})


def _is_thinking(block: object) -> bool:
    return isinstance(block, (ThinkingBlock, RedactedThinkingBlock))
