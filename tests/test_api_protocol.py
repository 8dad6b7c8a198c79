"""Request validation: every malformed body is a 400 that names the field and the problem."""
from __future__ import annotations

import json

import pytest

from preheat.server.errors import InvalidRequestError
from preheat.server.protocol import MessagesRequest, PromptRequest, TextBlock, parse_request

USER = [{"role": "user", "content": "hi"}]


def parse(body: dict, model=MessagesRequest):
    return parse_request(model, json.dumps(body).encode())


def error_of(body, model=MessagesRequest) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequestError) as info:
        parse_request(model, raw)
    assert info.value.status == 400 and info.value.error_type == "invalid_request_error"
    return info.value.message


def test_minimal_request_gets_anthropic_defaults():
    req = parse({"model": "m", "max_tokens": 5, "messages": USER})
    assert req.temperature == 1.0 and req.top_k is None and req.top_p is None
    assert req.stream is False and req.system == [] and req.tools == []
    assert req.messages[0].content == [TextBlock(type="text", text="hi")]


def test_string_system_and_content_become_text_blocks():
    req = parse({"model": "m", "max_tokens": 5, "system": "be brief", "messages": USER})
    assert [b.text for b in req.system] == ["be brief"]


def test_nulls_for_optional_lists_are_empty():
    req = parse({"model": "m", "max_tokens": 5, "messages": USER, "system": None, "tools": None,
                 "stop_sequences": None})
    assert req.system == [] and req.tools == [] and req.stop_sequences == []


def test_cache_control_defaults_to_five_minutes():
    req = parse({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]})
    assert req.messages[0].content[0].cache_control.ttl == "5m"


def test_fields_the_sdks_send_are_accepted():
    req = parse({"model": "m", "max_tokens": 0, "messages": USER, "temperature": 0, "top_p": 0.9,
                 "top_k": 5, "metadata": {"user_id": "u"}, "stream": True,
                 "stop_sequences": ["\n\n"], "service_tier": "auto", "speed": "standard",
                 "thinking": {"type": "disabled"}, "output_config": {"effort": "low"},
                 "tool_choice": {"type": "auto"}, "diagnostics": {"previous_message_id": None}})
    assert req.max_tokens == 0 and req.top_k == 5 and req.stream


def test_billing_and_routing_fields_are_accepted():
    req = parse(with_fields(user_profile_id="up_1", workspace_id="wrkspc_1",
                            billing_policy={"type": "billing_policy", "bill_to": "user_profile"},
                            fallback_credit_token="tok", fallbacks=[{"model": "claude-x"}]))
    assert req.workspace_id == "wrkspc_1"


def test_every_field_of_the_sdks_create_params_is_known():
    """Each field of the installed SDK's MessageCreateParams and MessageCountTokensParams (GA
    and beta) is declared: accepted, or refused with a reason, never "Extra inputs are not
    permitted"."""
    import typing

    from anthropic.types import message_create_params
    from anthropic.types.beta import message_create_params as beta_params
    sent_as_headers = {"betas"}
    for module in (message_create_params, beta_params):
        base = next(v for k, v in vars(module).items() if k.endswith("MessageCreateParamsBase"))
        fields = set(typing.get_type_hints(base)) - sent_as_headers
        assert fields <= set(MessagesRequest.model_fields), fields - set(MessagesRequest.model_fields)
    from anthropic.types import message_count_tokens_params
    from anthropic.types.beta import message_count_tokens_params as beta_count
    for module in (message_count_tokens_params, beta_count):
        base = next(v for k, v in vars(module).items() if k.endswith("MessageCountTokensParams"))
        fields = set(typing.get_type_hints(base)) - sent_as_headers
        assert fields <= set(PromptRequest.model_fields), fields - set(PromptRequest.model_fields)


@pytest.mark.parametrize("thinking", [
    {"type": "adaptive"}, {"type": "adaptive", "display": "summarized"},
    {"type": "enabled", "budget_tokens": 2048}, {"type": "enabled", "budget_tokens": 1024,
                                                 "display": "omitted"},
    {"type": "disabled"}, {"type": "between_tools"}])
def test_every_thinking_config_of_the_sdk_is_accepted(thinking):
    assert parse(with_fields(thinking=thinking)).thinking.type == thinking["type"]


def test_system_messages_and_thinking_blocks_in_the_conversation_are_accepted():
    req = parse(with_fields(messages=[
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "hello"}]},
        {"role": "user", "content": "and?"},
        {"role": "system", "content": "Answer briefly."}]))
    assert [m.role for m in req.messages] == ["user", "assistant", "user", "system"]
    assert req.messages[3].content[0].text == "Answer briefly."


def test_tool_use_and_tool_result_blocks():
    req = parse({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "w",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": "rain", "is_error": False}]}]})
    assert req.messages[2].content[0].content[0].text == "rain"


def with_fields(**fields) -> dict:
    """A valid request with ``fields`` replaced (None removes one)."""
    out = {"model": "m", "max_tokens": 5, "messages": USER, **fields}
    return {k: v for k, v in out.items() if v is not None}


@pytest.mark.parametrize("body, expected", [
    (b"{", "malformed JSON body"),
    (b"", "malformed JSON body"),
    (b"[1, 2]", "body: Input should be an object"),
    (with_fields(model=None), "model: Field required"),
    (with_fields(max_tokens=None), "max_tokens: Field required"),
    (with_fields(max_tokens="5"), "max_tokens: Input should be a valid integer"),
    (with_fields(max_tokens=-1), "max_tokens: Input should be greater than or equal to 0"),
    (with_fields(messages=[]), "messages: List should have at least 1 item"),
    (with_fields(messages=[{"role": "tool", "content": "x"}]),
     "messages.0.role: Input should be 'user', 'assistant' or 'system'"),
    (with_fields(messages=[*USER, {"role": "system", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]),
     "messages.1: a system message holds text blocks only"),
    (with_fields(messages=[{"role": "user", "content": [
        {"type": "thinking", "thinking": "x", "signature": "s"}]}]),
     "messages.0: thinking blocks belong to assistant messages only"),
    (with_fields(temperature=1.5), "temperature: Input should be less than or equal to 1"),
    (with_fields(stop_sequences=[""]), "stop_sequences: stop sequences must be non-empty"),
    (with_fields(container="c"), "container: containers hold code execution state"),
    (with_fields(mcp_servers=[{"type": "url", "url": "https://example.com", "name": "x"}]),
     "mcp_servers: the MCP connector is not supported"),
    (with_fields(compaction={"type": "compaction"}), "compaction: compaction requests are not supported"),
    (with_fields(made_up_field=1), "made_up_field: Extra inputs are not permitted"),
    (with_fields(cache_control={"type": "persistent"}), "cache_control.type: Input should be 'ephemeral'"),
    (with_fields(cache_control={"type": "ephemeral", "ttl": "2h"}),
     "cache_control.ttl: Input should be '5m' or '1h'"),
    (with_fields(thinking={"type": "enabled"}),
     "thinking: budget_tokens is required for type 'enabled' and only there"),
    (with_fields(thinking={"type": "enabled", "budget_tokens": 1000}),
     "thinking.budget_tokens: Input should be greater than or equal to 1024"),
    (with_fields(thinking={"type": "sometimes"}), "thinking.type: Input should be"),
    (with_fields(tools=[{"name": "t", "input_schema": {"type": "object"}, "defer_loading": True}]),
     "tools.0: defer_loading is not supported: this server has no tool search"),
    (with_fields(tools=[{"type": "tool_search_tool_regex_20251119",
                         "name": "tool_search_tool_regex"}]),
     "tools.0: tool search ('tool_search_tool_regex_20251119') is not supported"),
    (with_fields(tools=[{"type": "tool_search_tool_bm25_20251119",
                         "name": "tool_search_tool_bm25"}]),
     "tools.0: tool search ('tool_search_tool_bm25_20251119') is not supported"),
    (with_fields(tools=[{"name": "t", "input_schema": {"type": "object"},
                         "allowed_callers": ["code_execution_20250825"]}]),
     "tools.0: allowed_callers: only 'direct' is supported"),
    (with_fields(tool_choice={"type": "tool"}), "tool_choice: name is required when type is 'tool'"),
    (with_fields(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
     "tools.0: server tools ('web_search_20250305') are not supported"),
    (with_fields(tools=[{"name": "bad name!", "input_schema": {}}]),
     "tools.0.name: String should match pattern"),
])
def test_invalid_bodies_name_the_problem(body, expected):
    assert error_of(body).startswith(expected)


@pytest.mark.parametrize("block", [
    {"type": "tool_reference", "tool_name": "search"},
    {"type": "container_upload", "file_id": "file_1"},
])
def test_blocks_without_a_reading_are_a_clear_400(block):
    message = error_of({"model": "m", "max_tokens": 5,
                        "messages": [{"role": "user", "content": [block]}]})
    assert message.startswith(f"messages.0.content.0: content blocks of type '{block['type']}' "
                              "are not supported")


def test_a_block_without_a_reading_inside_a_tool_result_is_a_400_too():
    message = error_of({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t",
         "content": [{"type": "tool_reference", "tool_name": "x"}]}]}]})
    assert message.startswith("messages.0.content.0.content.0: content blocks of type "
                              "'tool_reference' are not supported")


def test_an_error_path_names_fields_not_union_tags():
    message = error_of({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": 1}]}]}]})
    assert message == "messages.0.content.0.content.0.text: Input should be a valid string"


def test_count_tokens_body_has_no_generation_fields():
    assert parse({"model": "m", "messages": USER}, PromptRequest).model == "m"
    assert error_of({"model": "m", "messages": USER, "max_tokens": 5}, PromptRequest) == \
        "max_tokens: Extra inputs are not permitted"


def test_the_structured_outputs_betas_output_format_is_output_config_format():
    schema = {"type": "json_schema", "schema": {"type": "object"}}
    request = parse({"model": "m", "max_tokens": 5, "messages": USER, "output_format": schema})
    assert request.output_config.format == schema and request.output_format is None
    assert error_of({"model": "m", "max_tokens": 5, "messages": USER, "output_format": schema,
                     "output_config": {"format": schema}}).endswith(
        "output_format and output_config.format can't both be set: they are the same field")
