"""``context_management``: edits to the conversation, applied before it is rendered.

- ``clear_tool_uses_20250919``: once the prompt is past its ``trigger`` (input tokens,
  default 100,000, or a number of tool uses), the results of the oldest tool uses are
  replaced with a placeholder, keeping the newest ``keep`` (default 3) and any tool in
  ``exclude_tools``; with ``clear_tool_inputs`` (all, or the tools it names) their inputs
  go too. With ``clear_at_least`` nothing is cleared unless that many input tokens go.
- ``clear_thinking_20251015``: earlier turns' thinking is never part of this server's
  prompt (``model_input.py``), so this edit removes no input tokens; it reports the
  thinking turns older than the ``keep`` it asks for as cleared.

An edit changes the prompt, so a cleared prefix is no longer the one cached before it:
the next turns cache the edited conversation. What was applied is reported as Anthropic
does, in the response's ``context_management.applied_edits``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from preheat.server.protocol import (ClearThinkingEdit, ClearToolUsesEdit, InputMessage,
                                     PromptRequest, RedactedThinkingBlock, TextBlock,
                                     ThinkingBlock, ToolResultBlock, ToolUseBlock)

CLEARED = "[tool result cleared to save context]"
DEFAULT_TRIGGER_TOKENS = 100_000
DEFAULT_KEEP = 3


@dataclass(frozen=True)
class EditedRequest:
    """The request as edited, what each edit did, and the prompt's size before (None where
    no edit needed it: none of them changes the size then)."""

    request: PromptRequest
    applied: list[dict[str, Any]]
    original_input_tokens: int | None


def apply_edits(request: PromptRequest,
                count_tokens: Callable[[PromptRequest], int]) -> EditedRequest:
    """``request`` with its ``context_management`` edits applied in order; ``count_tokens``
    measures a request's prompt (called only where an edit needs the figure)."""
    config = request.context_management
    original: int | None = None
    size = 0  # the prompt's size as edited so far, once measured
    applied: list[dict[str, Any]] = []
    for edit in config.edits if config is not None else ():
        if original is None and (isinstance(edit, ClearToolUsesEdit) or _thinking_turns(request)):
            original = size = count_tokens(request)
        if isinstance(edit, ClearThinkingEdit):
            request, done, size = _clear_thinking(request, edit, size, count_tokens)
            applied += done
            continue
        request, done, size = _clear_tool_uses(request, edit, size, count_tokens)
        applied += done
    return EditedRequest(request, applied, original)


def _thinking_turns(request: PromptRequest) -> list[int]:
    """The assistant messages that hold thinking (only a thinking model's are left)."""
    return [i for i, m in enumerate(request.messages) if m.role == "assistant" and any(
        isinstance(b, (ThinkingBlock, RedactedThinkingBlock)) for b in m.content)]


def _clear_thinking(request: PromptRequest, edit: ClearThinkingEdit, size: int,
                    count_tokens: Callable[[PromptRequest], int]
                    ) -> tuple[PromptRequest, list[dict[str, Any]], int]:
    """The request without the thinking of all but the last ``keep`` turns that have some."""
    if edit.keep == "all" or (edit.keep is not None and edit.keep.type == "all"):
        return request, [], size
    keep = 1 if edit.keep is None else edit.keep.value  # Anthropic's default: the last turn
    turns = _thinking_turns(request)
    cleared = set(turns[:max(len(turns) - keep, 0)])
    if not cleared:
        return request, [], size
    edited = request.model_copy(update={"messages": [
        m.model_copy(update={"content": [b for b in m.content if not isinstance(
            b, (ThinkingBlock, RedactedThinkingBlock))]}) if i in cleared else m
        for i, m in enumerate(request.messages)]})
    edited_size = count_tokens(edited)
    return edited, [{"type": "clear_thinking_20251015", "cleared_thinking_turns": len(cleared),
                     "cleared_input_tokens": max(size - edited_size, 0)}], edited_size


def _clear_tool_uses(request: PromptRequest, edit: ClearToolUsesEdit, size: int,
                     count_tokens: Callable[[PromptRequest], int]
                     ) -> tuple[PromptRequest, list[dict[str, Any]], int]:
    """The request with the edit applied (or as it was), what it did, and its size."""
    uses = [b for m in request.messages if m.role == "assistant" for b in m.content
            if isinstance(b, ToolUseBlock)]
    trigger = edit.trigger
    reached = (size >= DEFAULT_TRIGGER_TOKENS if trigger is None else
               (size if trigger.type == "input_tokens" else len(uses)) >= trigger.value)
    keep = DEFAULT_KEEP if edit.keep is None else edit.keep.value
    excluded = set(edit.exclude_tools or ())
    cleared = {b.tool_use_id for m in request.messages for b in m.content
               if isinstance(b, ToolResultBlock) and [p.text for p in b.content] == [CLEARED]}
    targets = [u for u in uses[:max(len(uses) - keep, 0)]
               if u.name not in excluded and u.id not in cleared]
    if not reached or not targets:
        return request, [], size
    inputs = edit.clear_tool_inputs
    clear_input = {u.id for u in targets
                   if inputs is True or (isinstance(inputs, list) and u.name in inputs)}
    edited = request.model_copy(update={"messages": [
        _cleared(m, {u.id for u in targets}, clear_input) for m in request.messages]})
    edited_size = count_tokens(edited)
    freed = size - edited_size
    if edit.clear_at_least is not None and freed < edit.clear_at_least.value:
        return request, [], size
    return edited, [{"type": "clear_tool_uses_20250919", "cleared_tool_uses": len(targets),
                     "cleared_input_tokens": max(freed, 0)}], edited_size


def _cleared(message: InputMessage, results: set[str], inputs: set[str]) -> InputMessage:
    content = []
    for block in message.content:
        if isinstance(block, ToolResultBlock) and block.tool_use_id in results:
            block = block.model_copy(update={"content": [TextBlock(type="text", text=CLEARED)]})
        elif isinstance(block, ToolUseBlock) and block.id in inputs:
            block = block.model_copy(update={"input": {}})
        content.append(block)
    return message.model_copy(update={"content": content})
