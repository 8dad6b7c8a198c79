"""Anthropic request -> chat messages -> prompt tokens, and where each block ends.

The prompt is read in Anthropic's order: tools, then system, then messages.
Tool definitions are rendered here as text at the top of the system turn (the
same way for every model, so their token positions are known), with how to call
them; tool_use blocks become calls in the model's ``ToolCallForm`` (the form it
writes them in) and tool_result blocks become text, and the blocks of one turn are joined with
"\\n". A final assistant turn is a prefill: the prompt ends with its text so the
reply continues it.

Every block's end is mapped to a token position: the number of prompt tokens
that lie entirely before the block's last character. Cache breakpoints are
placed at those positions.
"""
from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from preheat.server.errors import InvalidRequestError
from preheat.server.protocol import (CacheControl, InputMessage, PromptRequest, TextBlock,
                                     ThinkingBlock, ToolChoice, ToolResultBlock, ToolUseBlock)
from preheat.server.reasoning import PLAIN, GenerationPrompt, thinking_text
from preheat.server.system_turns import CLOSE as SYSTEM_CLOSE
from preheat.server.system_turns import OPEN as SYSTEM_OPEN
from preheat.server.system_turns import fold_system_turns, merge_roles
from preheat.server.tool_format import HERMES, ToolCallForm
from preheat.tokenizer.chat_template import ChatTemplateError

Section = Literal["tools", "system", "messages"]
BLOCK_SEPARATOR = "\n"
TOOLS_HEADER = "You can use the following tools, given as JSON definitions:"
# Stands in for a turn's content to find where the template puts it.
_SENTINEL = "\x00preheat-content\x00"


class ChatTokenizer(Protocol):
    max_token_chars: int

    def encode_prompt(self, text: str, *,
                      bos: bool = True) -> tuple[list[int], list[tuple[int, int]]]: ...

    def render_chat(self, messages: list[dict[str, str]], *, tools=None,
                    add_generation_prompt: bool = True, **template_vars) -> str: ...


@dataclass(frozen=True)
class PromptBlock:
    """A request block that may carry a cache breakpoint, and where it ends."""

    section: Section
    end: int  # prompt tokens up to and including this block
    cache_control: CacheControl | None


@dataclass(frozen=True)
class ChatTurn:
    role: str
    content: str


@dataclass(frozen=True)
class BuiltPrompt:
    text: str
    token_ids: list[int]
    blocks: list[PromptBlock]  # in prompt order
    tools_text: str  # tool definitions as rendered, for cache diagnostics
    tool_choice_text: str
    system_text: str
    turns: list[ChatTurn]  # merged message turns; the last one is the prefill if ``prefill``
    prefill: bool
    block_chars: list[int] = field(default_factory=list)  # where each block ends in ``text``

    def preamble_end(self) -> tuple[int, ...]:
        """Where the tools and system prompt end, when messages follow: where requests
        that share them part (the engine may keep a resume point there)."""
        ends = [b.end for b in self.blocks if b.section != "messages"]
        return (ends[-1],) if ends and ends[-1] < len(self.token_ids) else ()


@dataclass(frozen=True)
class _Piece:
    """A span of one turn's content; ``section`` is None for text no block owns."""

    text: str
    section: Section | None = None
    cache_control: CacheControl | None = None


def build_prompt(request: PromptRequest, tokenizer: ChatTokenizer,
                 tool_form: ToolCallForm = HERMES, max_tokens: int | None = None,
                 generation: GenerationPrompt = PLAIN) -> BuiltPrompt:
    """Render and tokenize a request, tool calls in ``tool_form``, ending as ``generation``
    says (thinking on or off); malformed conversations are a 400, and so is a prompt sure
    to be over ``max_tokens`` (see ``_refuse_oversized``)."""
    rendered = _render_request(request, tokenizer, tool_form, generation=generation)
    _refuse_oversized(rendered.text, tokenizer, max_tokens)
    return _placed(rendered, *tokenizer.encode_prompt(rendered.text))


def _refuse_oversized(text: str, tokenizer: ChatTokenizer, max_tokens: int | None) -> None:
    """A 400 for a text too long to be ``max_tokens`` tokens, counted without tokenizing:
    tokenizing megabytes costs hundreds of MB for a moment (ids, offsets, pieces), for a
    prompt the engine would refuse anyway."""
    if max_tokens is None:
        return
    at_least = -(-len(text) // tokenizer.max_token_chars)
    if at_least > max_tokens:
        raise InvalidRequestError(f"prompt is too long: at least {at_least} tokens > "
                                  f"{max_tokens} maximum ({len(text)} characters)")


def continue_prompt(request: PromptRequest, tokenizer: ChatTokenizer, tool_form: ToolCallForm,
                    history_ids: list[int], history_blocks: list[PromptBlock],
                    max_tokens: int | None = None,
                    generation: GenerationPrompt = PLAIN) -> BuiltPrompt:
    """A thread's next prompt: the stored token ids of its history, never re-tokenized,
    then the rest of ``request`` (the whole conversation) rendered and tokenized.

    ``history_blocks`` are the first blocks of ``request``, at their positions in
    ``history_ids``. Only the new messages are checked: the history passed its checks when
    it arrived, and its replies are the model's own (a whitespace-only reply is kept as
    generated). If the template rewrote the history's last block (so where it ends can't be
    found), the whole prompt is tokenized afresh instead.
    """
    k = len(history_blocks)
    history = len(request.messages) - _new_messages(request, k)
    rendered = _render_request(request, tokenizer, tool_form, checked_from=history,
                               generation=generation)
    _refuse_oversized(rendered.text, tokenizer, max_tokens)
    cut = rendered.block_chars[k - 1]
    last = _block_text(request.messages[history - 1].content[-1], tool_form)
    if not rendered.text.startswith(last, cut - len(last)):
        return _placed(rendered, *tokenizer.encode_prompt(rendered.text))
    ids, offsets = tokenizer.encode_prompt(rendered.text[cut:], bos=False)
    return _placed(rendered, ids, offsets, cut=cut, history_ids=history_ids,
                   history_blocks=history_blocks)


def _render_request(request: PromptRequest, tokenizer: ChatTokenizer,
                    tool_form: ToolCallForm, checked_from: int = 0,
                    generation: GenerationPrompt = PLAIN) -> BuiltPrompt:
    """The prompt's text and blocks (at ``block_chars``), not yet tokenized; messages from
    ``checked_from`` on are checked."""
    _check_messages(request.messages, checked_from)
    _check_text_blocks("system", request.system)
    tool_pieces = _tool_pieces(request.tools, request.tool_choice, tool_form)
    system_pieces = [_Piece(b.text, "system", b.cache_control) for b in request.system]
    turns = _merge_turns(request.messages, tool_form)
    prefill = turns[-1][0] == "assistant"
    top = [("system", tool_pieces + system_pieces)] if tool_pieces or system_pieces else []
    # a conversation that opens with a system message goes on with the system turn
    chat = merge_roles(top + turns)
    text, ends = _render_placing_system_turns(tokenizer, chat, prefill, generation)
    owned = [(piece, end) for piece, end in ends if piece.section is not None]
    return BuiltPrompt(
        text=text, token_ids=[],
        blocks=[PromptBlock(piece.section, 0, piece.cache_control) for piece, _ in owned],
        tools_text=_join(p for p in tool_pieces if p.section == "tools"),
        tool_choice_text=_tool_choice_text(request.tool_choice) if request.tools else "",
        system_text=_join(system_pieces),
        turns=[ChatTurn(role, _join(pieces)) for role, pieces in turns],
        prefill=prefill,
        block_chars=[end for _, end in owned],
    )


def _placed(rendered: BuiltPrompt, ids: list[int], offsets: list[tuple[int, int]], *,
            cut: int = 0, history_ids: Sequence[int] = (),
            history_blocks: Sequence[PromptBlock] = ()) -> BuiltPrompt:
    """``rendered`` with its tokens: ``history_ids`` (holding ``history_blocks``), then
    ``ids``, the tokens of ``rendered.text[cut:]``; each later block ends at the number of
    tokens that lie entirely before its last character."""
    token_ends = [end for _, end in offsets]
    k = len(history_blocks)
    blocks = list(history_blocks) + [
        PromptBlock(b.section, len(history_ids) + bisect.bisect_right(token_ends, c - cut),
                    b.cache_control)
        for b, c in zip(rendered.blocks[k:], rendered.block_chars[k:], strict=True)]
    return replace(rendered, token_ids=[*history_ids, *ids], blocks=blocks)


def _new_messages(request: PromptRequest, history_blocks: int) -> int:
    """How many of ``request``'s messages come after the first ``history_blocks`` blocks."""
    seen = len(request.tools) + len(request.system)
    for i, message in enumerate(request.messages):
        if seen >= history_blocks:
            return len(request.messages) - i
        seen += len(message.content)
    return 0


def _join(pieces) -> str:
    return BLOCK_SEPARATOR.join(p.text for p in pieces)


# ---- validation -----------------------------------------------------------------


def _check_messages(messages: list[InputMessage], first: int = 0) -> None:
    last = len(messages) - 1
    for i, message in enumerate(messages[first:], start=first):
        is_prefill = i == last and message.role == "assistant"
        if not message.content and not is_prefill:
            raise InvalidRequestError(
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message")
        _check_text_blocks(f"messages.{i}.content", message.content)
        if is_prefill and message.content:
            tail = message.content[-1]
            if isinstance(tail, TextBlock) and tail.text != tail.text.rstrip():
                raise InvalidRequestError(
                    f"messages.{i}: final assistant content cannot end with trailing whitespace")


def _check_text_blocks(where: str, blocks) -> None:
    for j, block in enumerate(blocks):
        if isinstance(block, TextBlock) and not block.text.strip():
            raise InvalidRequestError(f"{where}.{j}: text content blocks must contain "
                                      "non-whitespace text")


# ---- rendering requests to text ---------------------------------------------------


def _tool_pieces(tools, tool_choice: ToolChoice | None, form: ToolCallForm) -> list[_Piece]:
    if not tools:
        return []
    pieces = [_Piece(TOOLS_HEADER)]
    for tool in tools:
        definition = {"name": tool.name, "description": tool.description or "",
                      "input_schema": tool.input_schema}
        if tool.input_examples:
            definition["input_examples"] = tool.input_examples
        text = json.dumps(definition, ensure_ascii=False)
        pieces.append(_Piece(text, "tools", tool.cache_control))
    choice = _tool_choice_text(tool_choice)
    return pieces + [_Piece(form.instructions)] + ([_Piece(choice)] if choice else [])


def _tool_choice_text(choice: ToolChoice | None) -> str:
    if choice is None or choice.type == "auto":
        return ""
    if choice.type == "any":
        return "You must use one of these tools."
    if choice.type == "none":
        return "Do not use any of these tools."
    return f"You must use the tool named {choice.name}."


def _merge_turns(messages: list[InputMessage],
                 form: ToolCallForm) -> list[tuple[str, list[_Piece]]]:
    """Consecutive messages of one role are one turn, as Anthropic merges them."""
    return merge_roles([(m.role, [_Piece(_block_text(b, form), "messages",
                                         getattr(b, "cache_control", None))  # thinking: none
                                  for b in m.content]) for m in messages])


def _block_text(block, form: ToolCallForm) -> str:
    if isinstance(block, TextBlock):
        return block.text
    if isinstance(block, ToolUseBlock):
        return form.render(block.name, block.input)
    if isinstance(block, ThinkingBlock):  # kept only for a model that thinks (model_input)
        return thinking_text(block.thinking)
    assert isinstance(block, ToolResultBlock)
    error = ' is_error="true"' if block.is_error else ""
    result = BLOCK_SEPARATOR.join(part.text for part in block.content)
    return f'<tool_result tool_use_id="{block.tool_use_id}"{error}>{result}</tool_result>'


# ---- rendering chat to prompt text --------------------------------------------------


def _render_placing_system_turns(tokenizer: ChatTokenizer, chat: list[tuple[str, list[_Piece]]],
                                 prefill: bool, generation: GenerationPrompt
                                 ) -> tuple[str, list[tuple[_Piece, int]]]:
    """``_render``, with system turns inside the conversation as the template's own system
    turns where it renders them there, else folded into user turns (``system_turns.py``)."""
    inside = any(role == "system" for role, _ in chat[1:])
    try:
        text, ends, starts = _render(tokenizer, chat, prefill, generation)
    except ChatTemplateError:
        if not inside:
            raise
    else:
        if not inside or all(start >= 0 for i, ((role, _), start) in enumerate(zip(chat, starts))
                             if role == "system" and i > 0):
            return text, ends
    text, ends, _ = _render(tokenizer, fold_system_turns(chat, _delimited), prefill, generation)
    return text, ends


def _delimited(pieces: list[_Piece]) -> list[_Piece]:
    return [_Piece(SYSTEM_OPEN), *pieces, _Piece(SYSTEM_CLOSE)]


def _render(tokenizer: ChatTokenizer, chat: list[tuple[str, list[_Piece]]],
            prefill: bool, generation: GenerationPrompt
            ) -> tuple[str, list[tuple[_Piece, int]], list[int]]:
    """The prompt text, for every piece the char offset where it ends, and where each
    turn's content starts (-1 where the template rewrote or dropped it)."""
    history = chat[:-1] if prefill else chat
    messages = [{"role": role, "content": _join(pieces)} for role, pieces in history]
    text = tokenizer.render_chat(messages, add_generation_prompt=True,
                                 **generation.template_vars)
    starts = _content_starts(tokenizer, messages, text, generation.template_vars)
    text += generation.suffix
    if prefill:
        starts.append(len(text))
        text += _join(chat[-1][1])
    ends: list[tuple[_Piece, int]] = []
    cursor = 0
    for (_, pieces), start in zip(chat, starts):
        offset = start
        for piece in pieces:
            if start >= 0:
                cursor = offset + len(piece.text)
                offset = cursor + len(BLOCK_SEPARATOR)
            # else the template rewrote the content: keep the last known end (caches less)
            ends.append((piece, cursor))
    return text, ends, starts


def _content_starts(tokenizer: ChatTokenizer, messages: list[dict[str, str]],
                    text: str, template_vars: dict) -> list[int]:
    """Where each turn's content starts in ``text`` (-1 where it can't be found).

    The conversation is rendered once more with each turn's content replaced by a
    sentinel of its own, so text the template adds (a default system prompt, role
    headers) is never mistaken for a block; a turn's start is its sentinel's, moved by
    how much longer the contents before it are. One render, not one per turn: a
    40-message thread took 5 ms per request the other way. Where the template changed a
    content (so the start is off), it is searched for instead.
    """
    sentinels = [f"{_SENTINEL}{i}\x00" for i in range(len(messages))]
    probe = tokenizer.render_chat([{"role": m["role"], "content": s} for m, s in zip(messages, sentinels)],
                                  add_generation_prompt=True, **template_vars)
    starts, cursor, shift = [], 0, 0
    for message, sentinel in zip(messages, sentinels):
        content = message["content"]
        found = probe.find(sentinel)
        at = found + shift if found >= 0 else -1
        if not (at >= 0 and text.startswith(content, at)):
            at = text.find(content, cursor)
        if at >= 0 and found >= 0:  # the texts line up again after this turn's content
            shift = at + len(content) - (found + len(sentinel))
        starts.append(at)
        if at >= 0:
            cursor = at + len(content)
    return starts
