"""context_management edits: what is cleared, when, and what is reported."""
from __future__ import annotations

import json

import pytest

from preheat.loader.embedded import embedded_model_path
from preheat.server.context_edits import CLEARED, apply_edits
from preheat.server.errors import InvalidRequestError
from preheat.server.prompt_builder import build_prompt
from preheat.server.protocol import MessagesRequest, ToolResultBlock, ToolUseBlock, parse_request
from preheat.tokenizer.tokenizer import Tokenizer

TOOLS = [{"name": name, "input_schema": {"type": "object"}} for name in ("read", "grep")]


@pytest.fixture(scope="module")
def count():
    tokenizer = Tokenizer.from_gguf(embedded_model_path())
    return lambda request: len(build_prompt(request, tokenizer).token_ids)


def conversation(edits: list[dict], calls=("read", "read", "grep", "read")) -> MessagesRequest:
    messages = [{"role": "user", "content": "Look around."}]
    for i, name in enumerate(calls):
        messages.append({"role": "assistant", "content": [
            {"type": "tool_use", "id": f"t{i}", "name": name, "input": {"path": f"file{i}.py"}}]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"t{i}", "content": f"contents {i} " * 40}]})
    return MessagesRequest.model_validate({"model": "m", "max_tokens": 5, "tools": TOOLS,
                                           "messages": messages,
                                           "context_management": {"edits": edits}})


def results(request) -> list[str]:
    return [b.content[0].text for m in request.messages for b in m.content
            if isinstance(b, ToolResultBlock)]


def inputs(request) -> list[dict]:
    return [b.input for m in request.messages for b in m.content if isinstance(b, ToolUseBlock)]


def test_the_oldest_results_are_cleared_once_the_trigger_is_reached(count):
    request = conversation([{"type": "clear_tool_uses_20250919",
                             "trigger": {"type": "tool_uses", "value": 4},
                             "keep": {"type": "tool_uses", "value": 1}}])
    edited = apply_edits(request, count)
    assert results(edited.request)[:3] == [CLEARED] * 3
    assert results(edited.request)[3].startswith("contents 3")
    assert inputs(edited.request) == inputs(request)  # inputs stay unless asked
    assert edited.original_input_tokens == count(request)
    [applied] = edited.applied
    assert applied == {"type": "clear_tool_uses_20250919", "cleared_tool_uses": 3,
                       "cleared_input_tokens": count(request) - count(edited.request)}
    assert applied["cleared_input_tokens"] > 0


def test_below_the_trigger_nothing_is_cleared(count):
    request = conversation([{"type": "clear_tool_uses_20250919"}])  # default: 100k tokens
    edited = apply_edits(request, count)
    assert edited.request is request and edited.applied == []


def test_excluded_tools_and_inputs(count):
    request = conversation([{"type": "clear_tool_uses_20250919", "keep": {"type": "tool_uses", "value": 0},
                             "trigger": {"type": "input_tokens", "value": 10},
                             "exclude_tools": ["grep"], "clear_tool_inputs": ["read"]}])
    edited = apply_edits(request, count)
    assert results(edited.request) == [CLEARED, CLEARED, results(request)[2], CLEARED]
    assert inputs(edited.request) == [{}, {}, {"path": "file2.py"}, {}]
    assert edited.applied[0]["cleared_tool_uses"] == 3


def test_clear_at_least_clears_nothing_when_it_cannot_free_that_much(count):
    request = conversation([{"type": "clear_tool_uses_20250919",
                             "trigger": {"type": "tool_uses", "value": 1},
                             "clear_at_least": {"type": "input_tokens", "value": 100_000}}])
    edited = apply_edits(request, count)
    assert edited.request is request and edited.applied == []


def thinking_conversation(keep) -> MessagesRequest:
    turn = {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "text", "text": "ok"}]}
    edit = {"type": "clear_thinking_20251015", **({} if keep is None else {"keep": keep})}
    return MessagesRequest.model_validate({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "a"}, turn, {"role": "user", "content": "b"}, turn,
        {"role": "user", "content": "c"}, turn, {"role": "user", "content": "d"}],
        "context_management": {"edits": [edit]}})


@pytest.mark.parametrize("keep, cleared", [
    (None, 2), ({"type": "thinking_turns", "value": 2}, 1), ("all", 0), ({"type": "all"}, 0)])
def test_clear_thinking_clears_the_older_turns_thinking(count, keep, cleared):
    """As a thinking model's request reaches the edits (its signed thinking kept)."""
    request = thinking_conversation(keep)
    edited = apply_edits(request, count)
    kept = [any(b.type == "thinking" for b in m.content)
            for m in edited.request.messages if m.role == "assistant"]
    assert kept == [False] * cleared + [True] * (3 - cleared)
    expected = [{"type": "clear_thinking_20251015", "cleared_thinking_turns": cleared,
                 "cleared_input_tokens": count(request) - count(edited.request)}] if cleared else []
    assert edited.applied == expected
    assert not cleared or expected[0]["cleared_input_tokens"] > 0


def test_compaction_is_a_clear_400():
    body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "a"}],
                       "context_management": {"edits": [{"type": "compact_20260112"}]}}).encode()
    with pytest.raises(InvalidRequestError, match="compact_20260112 is not supported"):
        parse_request(MessagesRequest, body)


def test_a_second_clear_counts_only_what_it_clears(count):
    edit = {"type": "clear_tool_uses_20250919", "trigger": {"type": "tool_uses", "value": 1}}
    request = conversation([{**edit, "keep": {"type": "tool_uses", "value": 3}},
                            {**edit, "keep": {"type": "tool_uses", "value": 2}}])
    edited = apply_edits(request, count)
    first, second = edited.applied
    # the second finds the first's result cleared already: it clears one more
    assert first["cleared_tool_uses"] == 1 and second["cleared_tool_uses"] == 1
    assert first["cleared_input_tokens"] + second["cleared_input_tokens"] == \
        count(request) - count(edited.request)
    assert edited.original_input_tokens == count(request)
