"""Requests shaped as Claude Code 2.1 sends them, through a real ``preheat serve``.

The shape (headers, fields, the billing-header block, a system message after the user's
turn, a moving breakpoint on the newest user turn) was recorded against a stub server;
the texts here are our own. A session's second turn must read its first turn's whole
prompt from the cache, whatever nonce the billing header carries.
"""
from __future__ import annotations

import json
import uuid

import anthropic
import httpx
import pytest
from e2e_helpers import GREEDY, KEY_A, document, start_server

BETAS = ("claude-code-20250219,context-1m-2025-08-07,interleaved-thinking-2025-05-14,"
         "thinking-token-count-2026-05-13,context-management-2025-06-27,"
         "prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,effort-2025-11-24")
HEADERS = {"x-api-key": KEY_A, "anthropic-version": "2023-06-01", "anthropic-beta": BETAS}
EPHEMERAL = {"type": "ephemeral"}
TOOLS = [
    {"name": "Read", "description": "Read a file from the local filesystem.",
     "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                      "required": ["file_path"], "additionalProperties": False}},
    {"name": "Bash", "description": "Run a shell command.",
     "input_schema": {"type": "object", "properties": {"command": {"type": "string"},
                                                       "timeout": {"type": "number"}},
                      "required": ["command"], "additionalProperties": False}},
]


@pytest.fixture(scope="module")
def cc_server(server_logs):
    # the embedded model's whole window, and Anthropic's default minimum cacheable prefix
    srv = start_server(server_logs, "claude-code", ["--context-window", "8192"])
    yield srv
    srv.stop()


def body(messages: list[dict], instructions: str) -> dict:
    return {
        "model": "claude-sonnet-4-6", "max_tokens": 64000, "stream": True,
        "metadata": {"user_id": f"user_{uuid.uuid4().hex}_account__session_{uuid.uuid4()}"},
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "system": [
            # a per-request nonce: must not make the prompt new
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.abc; "
                                     f"cc_entrypoint=sdk-cli; cch={uuid.uuid4().hex[:5]};"},
            {"type": "text", "text": "You are an agent for software engineering.",
             "cache_control": EPHEMERAL},
            {"type": "text", "text": instructions, "cache_control": EPHEMERAL}],
        "tools": TOOLS,
        "messages": messages,
    }


def user_turn(text: str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text, "cache_control": EPHEMERAL}]}


def plain(message: dict) -> dict:
    """``message`` as a later request sends it back: its breakpoint has moved on."""
    return {**message, "content": [{k: v for k, v in block.items() if k != "cache_control"}
                                   for block in message["content"]]}


REMINDER = {"role": "system", "content": "Answer in one short sentence."}


def stream(server, payload: dict) -> tuple[list[str], dict, list[dict]]:
    """The events' names, the final usage and the content blocks of a streamed request."""
    names, usage, blocks = [], {}, []
    with httpx.stream("POST", f"{server.base_url}/v1/messages?beta=true", headers=HEADERS,
                      json={**payload, **GREEDY}, timeout=300) as response:
        assert response.status_code == 200, response.read()
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
                names.append(event)
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                if event == "message_start":
                    usage = data["message"]["usage"]
                elif event == "content_block_start":
                    blocks.append(data["content_block"])
                elif event == "message_delta":
                    usage = {**usage, **data["usage"], "stop_reason": data["delta"]["stop_reason"]}
    return names, usage, blocks


def test_the_connectivity_probe_answers(cc_server):
    assert httpx.get(f"{cc_server.base_url}/").status_code == 200
    assert httpx.head(f"{cc_server.base_url}/").status_code == 200


def test_a_claude_code_session_is_served_and_its_second_turn_reads_the_first(cc_server):
    instructions = document(900)
    first_user = user_turn("Which file holds the license?")
    names, first, _ = stream(cc_server, body([first_user, REMINDER], instructions))
    assert names[0] == "message_start" and names[-1] == "message_stop" and "error" not in names
    assert first["stop_reason"] in ("end_turn", "tool_use", "model_context_window_exceeded")
    written = first["cache_creation_input_tokens"] + first["cache_read_input_tokens"]
    assert written > 1024  # through the newest user turn

    reply = {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "The user asks about a file.", "signature": "c2ln"},
        {"type": "text", "text": "It is in LICENSE."}]}
    second_messages = [plain(first_user), reply, user_turn("Show me its first line."), REMINDER]
    names, second, _ = stream(cc_server, body(second_messages, instructions))
    assert "error" not in names
    assert second["cache_read_input_tokens"] >= written  # the whole earlier prompt, read
    total = (second["input_tokens"] + second["cache_creation_input_tokens"]
             + second["cache_read_input_tokens"])
    assert second["cache_read_input_tokens"] / total > 0.9


def test_count_tokens_leaves_the_billing_header_out_too(cc_server):
    client = anthropic.Anthropic(base_url=cc_server.base_url, api_key=KEY_A, max_retries=0)
    payload = body([user_turn("Hi"), REMINDER], "Be careful.")
    fields = {k: payload[k] for k in ("model", "system", "tools", "messages", "thinking")}
    with_header = client.messages.count_tokens(**fields).input_tokens
    fields["system"] = payload["system"][1:]
    assert client.messages.count_tokens(**fields).input_tokens == with_header


def test_the_sdks_system_message_param_is_accepted(cc_server):
    client = anthropic.Anthropic(base_url=cc_server.base_url, api_key=KEY_A, max_retries=0)
    message = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=8,
        messages=[{"role": "user", "content": "Say hi."},
                  {"role": "system", "content": "Reply in French."}],
        thinking={"type": "adaptive"}, extra_body=GREEDY)
    assert message.content and all(block.type == "text" for block in message.content)


def test_clear_tool_uses_is_applied_and_reported(cc_server):
    client = anthropic.Anthropic(base_url=cc_server.base_url, api_key=KEY_A, max_retries=0)
    messages = [{"role": "user", "content": "Read the two files."}]
    for i in range(2):
        messages += [{"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{i}",
                                                        "name": "Read",
                                                        "input": {"file_path": f"/src/{i}.py"}}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}",
                                                   "content": document(300)}]}]
    edits = {"edits": [{"type": "clear_tool_uses_20250919",
                        "trigger": {"type": "tool_uses", "value": 2},
                        "keep": {"type": "tool_uses", "value": 1}}]}
    counted = client.messages.count_tokens(model="claude-sonnet-4-6", tools=TOOLS,
                                           messages=messages,
                                           extra_body={"context_management": edits})
    message = client.messages.create(model="claude-sonnet-4-6", max_tokens=4, tools=TOOLS,
                                     messages=messages, extra_body={"context_management": edits,
                                                                    **GREEDY})
    [applied] = message.model_extra["context_management"]["applied_edits"]
    assert applied["type"] == "clear_tool_uses_20250919" and applied["cleared_tool_uses"] == 1
    original = counted.model_extra["context_management"]["original_input_tokens"]
    assert original - counted.input_tokens == applied["cleared_input_tokens"] > 200
    usage = message.usage
    assert usage.input_tokens + usage.cache_read_input_tokens + \
        usage.cache_creation_input_tokens == counted.input_tokens


def test_a_miss_caused_by_a_context_edit_is_named_in_the_diagnostics(cc_server):
    """The client only appends turns, yet the edit clears a result the last request cached:
    the diagnostics say the messages changed, and that the edit changed them."""
    client = anthropic.Anthropic(base_url=cc_server.base_url, api_key=KEY_A, max_retries=0)
    edits = {"edits": [{"type": "clear_tool_uses_20250919",
                        "trigger": {"type": "tool_uses", "value": 2},
                        "keep": {"type": "tool_uses", "value": 1}}]}
    messages = [{"role": "user", "content": "Read the files."}]

    def read_file(i: int) -> None:
        messages.extend([
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{i}",
                                               "name": "Read", "input": {"file_path": f"/{i}.py"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}",
                                          "content": document(900)}]}])

    def turn(previous: str | None):
        return client.messages.create(
            model="claude-sonnet-4-6", max_tokens=2, tools=TOOLS, messages=messages,
            cache_control={"type": "ephemeral"}, diagnostics={"previous_message_id": previous},
            extra_body={"context_management": edits, **GREEDY})

    read_file(0)
    read_file(1)
    first = turn(None)  # clears the first result; the rest is written to the cache
    assert first.usage.cache_creation_input_tokens > 1024
    read_file(2)
    second = turn(first.id)  # clears the second result too: the prefix changed there
    reason = second.diagnostics.cache_miss_reason.model_dump()
    assert reason["type"] == "messages_changed"
    assert reason["context_edits"] == ["clear_tool_uses_20250919"]
    assert reason["cache_missed_input_tokens"] == (first.usage.cache_creation_input_tokens
                                                   - second.usage.cache_read_input_tokens) > 0
