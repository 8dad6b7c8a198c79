"""The Responses API's rooms without an engine: request validation, the translation into a
Messages API request, the typed event stream, and the store of responses."""
from __future__ import annotations

import asyncio
import json

import pytest

from engine_driver import FakeClock
from preheat.engine import CacheUsage, Finished, StopReason
from preheat.server.errors import APIError
from preheat.server.held_history import HeldHistory
from preheat.server.openai_protocol import parse_openai_request
from preheat.server.prompt_builder import PromptBlock
from preheat.server.protocol import InputMessage, MessageResponse, TextBlock, Tool, Usage
from preheat.server.reply_events import Closed, Opened
from preheat.server.reply_parser import BlockStart, BlockStop, JsonPiece, TextPiece
from preheat.server.response_store import ResponseStore, StoredResponse
from preheat.server.responses_input import to_messages_request
from preheat.server.responses_output import ResponseEvents, ResponseShape
from preheat.server.responses_protocol import ResponseCreateRequest

WINDOW = 4096
TOOL = {"type": "function", "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def parse(**body) -> ResponseCreateRequest:
    return parse_openai_request(ResponseCreateRequest,
                                json.dumps({"model": "m", **body}).encode())


def refusal(**body) -> APIError:
    with pytest.raises(APIError) as info:
        request = parse(**body)
        to_messages_request(request, WINDOW, continues=False)
    assert info.value.status == 400
    return info.value


# ---- requests ---------------------------------------------------------------------------


def test_string_input_is_one_user_message_and_instructions_are_the_system():
    request = to_messages_request(parse(input="Hi", instructions="Be brief."), WINDOW, False)
    assert [b.text for b in request.system] == ["Be brief."]
    assert [(m.role, m.content[0].text) for m in request.messages] == [("user", "Hi")]
    assert request.max_tokens == WINDOW  # no max_output_tokens: the window ends the reply


def test_items_become_messages_with_tool_use_and_tool_result_blocks():
    request = to_messages_request(parse(tools=[TOOL], input=[
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "weather",
         "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "Rain."},
        {"role": "system", "content": "Answer in French."},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ]), WINDOW, False)
    assert [b.text for b in request.system] == ["Use tools."]
    roles = [m.role for m in request.messages]
    assert roles == ["user", "assistant", "user", "system"]
    call, result = request.messages[1].content[0], request.messages[2].content[0]
    assert (call.type, call.id, call.input) == ("tool_use", "call_1", {"city": "Oslo"})
    assert (result.type, result.tool_use_id) == ("tool_result", "call_1")
    assert request.tools[0].name == "weather" and request.tools[0].strict is True


def test_a_continue_s_system_items_stay_in_the_conversation():
    request = to_messages_request(parse(input=[{"role": "system", "content": "Now in French."},
                                               {"role": "user", "content": "Go on."}]),
                                  WINDOW, continues=True)
    assert request.system == [] and [m.role for m in request.messages] == ["system", "user"]


def test_tool_choice_parallel_calls_and_text_format_map_onto_the_messages_api():
    request = to_messages_request(parse(
        input="x", tools=[TOOL], tool_choice={"type": "function", "name": "weather"},
        parallel_tool_calls=False), WINDOW, False)
    assert request.tool_choice.type == "tool" and request.tool_choice.name == "weather"
    assert request.tool_choice.disable_parallel_tool_use is True
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    request = to_messages_request(parse(input="x", text={"format": {
        "type": "json_schema", "name": "a", "schema": schema}}), WINDOW, False)
    assert request.output_config.format == {"type": "json_schema", "schema": schema}
    assert to_messages_request(parse(input="x", tool_choice="required", tools=[TOOL]),
                               WINDOW, False).tool_choice.type == "any"


def test_automatic_caching_marks_the_instructions_and_the_end_of_the_prompt():
    request = to_messages_request(parse(input="x", instructions="Long rules."), WINDOW, False)
    assert request.system[-1].cache_control is not None
    assert request.cache_control is not None
    explicit = to_messages_request(parse(input="x", instructions="Rules.",
                                         prompt_cache_options={"mode": "explicit"}),
                                   WINDOW, False)
    assert explicit.system[-1].cache_control is None and explicit.cache_control is None


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"input": "x", "bogus": 1}, "bogus", "Extra inputs"),
    ({"input": "x", "tools": [{"type": "file_search"}]}, "tools.0", "function tools only"),
    ({"input": "x", "background": True}, "background", "background"),
    ({"input": "x", "truncation": "auto"}, "truncation", "disabled"),
    ({"input": "x", "include": ["file_search_call.results"]}, "include", "can't be included"),
    ({"input": [{"type": "web_search_call", "id": "w"}]}, "input.0", "web_search_call"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "input.0.content.0", "input_audio"),
    ({"input": "x", "tool_choice": "required"}, "tool_choice", "only allowed when tools"),
    ({"input": "x", "max_output_tokens": WINDOW + 1}, "max_output_tokens", "context window"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]},
     "input.0.arguments", "JSON object"),
    ({"input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata", "16"),
])
def test_what_this_server_cannot_do_is_a_400_naming_the_field(body, param, words):
    err = refusal(**body)
    assert err.param == param and words in err.message


# ---- output -----------------------------------------------------------------------------

USAGE = Usage(input_tokens=5, cache_creation_input_tokens=3, cache_read_input_tokens=2,
              output_tokens=4, cache_creation={"ephemeral_5m_input_tokens": 3,
                                               "ephemeral_1h_input_tokens": 0})


def message(content: list[dict], stop_reason: str = "end_turn") -> MessageResponse:
    return MessageResponse(id="msg_1", model="m", content=content, stop_reason=stop_reason,
                           stop_sequence=None, usage=USAGE)


def frames_of(events, shape: ResponseShape) -> tuple[list[dict], list]:
    stored = []

    async def on_finished(response, closed):
        stored.append(response)

    async def reply():
        for event in events:
            yield event

    async def collect():
        return [frame async for frame in ResponseEvents(shape, on_finished).render(reply())]
    out = []
    for frame in asyncio.run(collect()):
        kind, data = frame.decode().strip().split("\n")
        out.append(json.loads(data.removeprefix("data: ")))
        assert kind == f"event: {out[-1]['type']}"
    return out, stored


def test_the_stream_is_the_typed_events_in_order_and_ends_with_the_stored_response():
    shape = ResponseShape("resp_ab", parse(input="x", tools=[TOOL]))
    call = {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {"city": "Oslo"}}
    finished = Finished(StopReason.EOS, None, CacheUsage(5, 3, 2), 4, [1, 2, 3, 4], "")
    events = [Opened(message([])), BlockStart(0, {"type": "text", "text": ""}),
              TextPiece(0, "Let me "), TextPiece(0, "check."), BlockStop(0),
              BlockStart(1, {**call, "input": {}}), JsonPiece(1, '{"city": '),
              JsonPiece(1, '"Oslo"}'), BlockStop(1),
              Closed(message([{"type": "text", "text": "Let me check."}, call], "tool_use"),
                     finished)]
    frames, stored = frames_of(events, shape)
    assert [f["sequence_number"] for f in frames] == list(range(len(frames)))
    assert [f["type"] for f in frames] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    final = frames[-1]["response"]
    assert final["status"] == "completed" and final == stored[0].model_dump()
    text_item, call_item = final["output"]
    assert text_item["id"] == frames[2]["item"]["id"] == frames[4]["item_id"]
    assert text_item["content"][0]["text"] == frames[6]["text"] == "Let me check."
    assert call_item["call_id"] == "call_9" and call_item["id"] == frames[9]["item"]["id"]
    assert json.loads(call_item["arguments"]) == json.loads(frames[12]["arguments"])
    assert final["usage"] == {"input_tokens": 10, "output_tokens": 4, "total_tokens": 14,
                              "input_tokens_details": {"cached_tokens": 2,
                                                       "cache_write_tokens": 3},
                              "output_tokens_details": {"reasoning_tokens": 0}}


def test_a_reply_cut_short_is_incomplete_and_a_failure_is_response_failed():
    shape = ResponseShape("resp_cd", parse(input="x", max_output_tokens=4))
    cut = shape.finished(message([{"type": "text", "text": "One two"}], "max_tokens"))
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output[0].status == "incomplete" and cut.output_text == "One two"

    async def failing():
        yield Opened(message([]))
        raise APIError("the engine stopped")
    async def collect():
        async def nothing(*_):
            return None
        return [f async for f in ResponseEvents(shape, nothing).render(failing())]
    last = json.loads(asyncio.run(collect())[-1].decode().split("data: ", 1)[1])
    assert last["type"] == "response.failed" and last["response"]["status"] == "failed"
    assert last["response"]["error"]["message"] == "the engine stopped"


# ---- the store ----------------------------------------------------------------------------


def history() -> HeldHistory:
    return HeldHistory(
        system=[TextBlock(type="text", text="Rules.")],
        tools=[Tool.model_validate({"name": "f", "input_schema": {"type": "object"}})],
        messages=[InputMessage.model_validate({"role": "user", "content": "Hi"}),
                  InputMessage.model_validate({"role": "assistant", "content": [
                      {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": None}}]})],
        token_ids=[1, 2, 70000, 4], blocks=[PromptBlock("system", 3, None),
                                            PromptBlock("messages", 4, None)])


def stored(response_id: str = "resp_1") -> StoredResponse:
    return StoredResponse(response_id, {"id": response_id, "output": []},
                          [{"id": "msg_1", "type": "message"}], history())


def test_the_store_keeps_a_response_and_its_history_per_key_until_deleted(tmp_path):
    path = tmp_path / "responses.sqlite3"
    store = ResponseStore(path)
    store.put("key-a", stored())
    assert store.get("key-b", "resp_1") is None  # another key's
    store.close()
    store = ResponseStore(path)  # a restarted server reads it back
    got = store.get("key-a", "resp_1")
    assert got == stored()  # history, exact token ids, blocks and all
    assert got.history.same_preamble(to_messages_request(
        parse(input="x", instructions="Rules.", tools=[{
            "type": "function", "name": "f", "parameters": {"type": "object"},
            "strict": None}]), WINDOW, False).model_copy(update={"tool_choice": None}))
    assert not store.delete("key-b", "resp_1") and store.delete("key-a", "resp_1")
    assert store.get("key-a", "resp_1") is None


def test_responses_past_retention_are_gone():
    clock = FakeClock()
    store = ResponseStore(None, retention_seconds=100, clock=clock)
    store.put("a", stored("resp_old"))
    clock.now += 60
    store.put("a", stored("resp_new"))
    clock.now += 50
    assert store.get("a", "resp_old") is None and store.get("a", "resp_new") is not None
