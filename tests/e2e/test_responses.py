"""OpenAI's Responses API through the official ``openai`` SDK against the embedded model.

The same engine, prompt cache and grammars as the other APIs: a stored response's
conversation continues with ``previous_response_id`` on the KV held for it, so each turn
prefills only its new input; function calls and JSON replies hold to their schemas.
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import openai
import pytest
from e2e_helpers import ALIAS, KEY_A, KEY_B, document
from pydantic import BaseModel

WEATHER = {"type": "function", "name": "get_weather",
           "description": "The current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}
ASK = "What is the weather in Paris right now?"
GREEDY = {"temperature": 0}
# The text events of one message item, in order, between the response's own events.
TEXT_ITEM_EVENTS = ["response.output_item.added", "response.content_part.added",
                    "response.output_text.delta", "response.output_text.done",
                    "response.content_part.done", "response.output_item.done"]


@pytest.fixture
def oai(server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY_A, max_retries=0,
                       timeout=120) as client:
        yield client


@pytest.fixture
def oai_b(server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY_B, max_retries=0,
                       timeout=120) as client:
        yield client


def check_usage(usage) -> None:
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert 0 <= usage.input_tokens_details.cached_tokens <= usage.input_tokens


def test_create_answers_with_a_stored_completed_response(oai):
    response = oai.responses.create(model=ALIAS, input="Say hello.", max_output_tokens=12,
                                    instructions="You are terse.", **GREEDY)
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status in ("completed", "incomplete")
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.output_text and response.output_text == response.output[0].content[0].text
    assert response.instructions == "You are terse." and response.store is True
    check_usage(response.usage)
    again = oai.responses.retrieve(response.id)
    assert again.id == response.id and again.output_text == response.output_text
    assert again.usage == response.usage


def test_a_stream_sends_the_typed_events_in_order_and_adds_up_to_the_response(oai):
    prompt = f"{document(60)}\nSummarise that in one line."
    whole = oai.responses.create(model=ALIAS, input=prompt, max_output_tokens=16, **GREEDY)
    with oai.responses.stream(model=ALIAS, input=prompt, max_output_tokens=16,
                              **GREEDY) as stream:
        events = list(stream)
    final = events[-1].response  # completed or incomplete (the SDK's helper waits for the first)
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert kinds[-1] == f"response.{final.status}"
    deduplicated = [k for i, k in enumerate(kinds[2:-1]) if k != kinds[2:-1][i - 1] or i == 0]
    assert deduplicated == TEXT_ITEM_EVENTS
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == whole.output_text  # greedy: the same tokens
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {final.output[0].id}
    assert oai.responses.retrieve(final.id).output_text == final.output_text  # stored too


def test_a_function_call_round_trip_with_function_call_output(oai):
    first = oai.responses.create(model=ALIAS, input=ASK, tools=[WEATHER],
                                 tool_choice="required", max_output_tokens=60, **GREEDY)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and first.status == "completed"
    call = calls[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    result = {"type": "function_call_output", "call_id": call.call_id,
              "output": "Sunny and 21 degrees."}
    chained = oai.responses.create(model=ALIAS, previous_response_id=first.id,
                                   input=[result], tools=[WEATHER], max_output_tokens=30,
                                   **GREEDY)
    assert chained.previous_response_id == first.id and chained.output_text
    # the same conversation sent whole (the call as an input item) gets the same greedy reply
    whole = oai.responses.create(
        model=ALIAS, input=[{"role": "user", "content": ASK}, call, result],  # the item as given
        tools=[WEATHER], max_output_tokens=30, **GREEDY)
    assert whole.output_text == chained.output_text


def test_a_streamed_function_call_sends_its_arguments_as_deltas(oai):
    with oai.responses.stream(model=ALIAS, input=ASK, tools=[WEATHER], tool_choice="required",
                              max_output_tokens=60, **GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events
                     if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done and json.loads(done[0].arguments) == json.loads(deltas)
    call = next(item for item in final.output if item.type == "function_call")
    assert json.loads(call.arguments) == json.loads(deltas)
    assert done[0].item_id == call.id


def test_text_format_json_schema_holds_the_reply_to_it(oai):
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    response = oai.responses.create(
        model=ALIAS, input="Name a large city and its population, as JSON.",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema,
                         "strict": True}}, max_output_tokens=60, **GREEDY)
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text.format.type == "json_schema"


class City(BaseModel):
    name: str
    population: int


def test_responses_parse_returns_the_pydantic_model(oai):
    response = oai.responses.parse(model=ALIAS, input="Name a large city and its population.",
                                   text_format=City, max_output_tokens=60, **GREEDY)
    assert isinstance(response.output_parsed, City)
    City.model_validate_json(response.output_text, strict=True)


def test_a_ten_turn_chain_prefills_only_each_turn_s_new_input(oai):
    instructions = f"{document(150)}\nAnswer in a few words."
    previous, usages, turns = None, [], []
    for turn in range(10):
        response = oai.responses.create(
            model=ALIAS, instructions=instructions, input=f"Question {turn}: name a colour.",
            previous_response_id=previous, max_output_tokens=8, **GREEDY)
        previous = response.id
        usages.append(response.usage)
        turns.append(response)
    for before, usage in zip(usages, usages[1:]):
        # the whole earlier conversation, its reply included, is read from the held KV
        # (but the end-of-turn token and the last reply token, never run through the
        # model): only the new question is prefilled
        assert usage.input_tokens_details.cached_tokens >= (
            before.input_tokens + before.output_tokens - 2)
        assert usage.input_tokens - usage.input_tokens_details.cached_tokens < 40
    assert oai.responses.retrieve(turns[-1].id).previous_response_id == turns[-2].id


def test_a_chain_gives_what_the_whole_conversation_gets(oai):
    question, follow_up = f"{document(40)}\nName a fruit.", "And a colour?"
    first = oai.responses.create(model=ALIAS, input=question, max_output_tokens=10, **GREEDY)
    chained = oai.responses.create(model=ALIAS, input=follow_up, previous_response_id=first.id,
                                   max_output_tokens=10, **GREEDY)
    whole = oai.responses.create(
        model=ALIAS, max_output_tokens=10, **GREEDY,
        input=[{"role": "user", "content": question},
               {"role": "assistant", "content": first.output_text},
               {"role": "user", "content": follow_up}])
    assert chained.output_text == whole.output_text


def test_new_instructions_on_a_chain_are_the_request_s_own(oai):
    first = oai.responses.create(model=ALIAS, input="Name a fruit.", max_output_tokens=6,
                                 instructions="You like apples.", **GREEDY)
    second = oai.responses.create(model=ALIAS, input="And a colour?", max_output_tokens=6,
                                  instructions="You like the sea.",
                                  previous_response_id=first.id, **GREEDY)
    assert second.instructions == "You like the sea." and second.status != "failed"
    # rendered afresh under the new instructions: nothing of the old prefix matches
    assert second.usage.input_tokens_details.cached_tokens < first.usage.input_tokens


def test_input_items_list_a_response_s_own_input_with_ids(oai):
    response = oai.responses.create(
        model=ALIAS, max_output_tokens=4, **GREEDY,
        input=[{"role": "user", "content": "One."}, {"role": "assistant", "content": "Two."},
               {"role": "user", "content": [{"type": "input_text", "text": "Three."}]}])
    items = oai.responses.input_items.list(response.id)
    assert [item.content[0].text for item in items.data] == ["Three.", "Two.", "One."]
    assert all(item.id for item in items.data)
    first_page = oai.responses.input_items.list(response.id, order="asc", limit=2)
    assert [i.content[0].text for i in first_page.data] == ["One.", "Two."]
    assert first_page.has_more
    rest = oai.responses.input_items.list(response.id, order="asc", after=first_page.last_id)
    assert [i.content[0].text for i in rest.data] == ["Three."] and not rest.has_more


def test_delete_unknown_and_another_key_s_ids_are_404s(oai, oai_b):
    response = oai.responses.create(model=ALIAS, input="Hi.", max_output_tokens=4, **GREEDY)
    with pytest.raises(openai.NotFoundError):
        oai_b.responses.retrieve(response.id)  # another key's
    with pytest.raises(openai.NotFoundError) as info:
        oai_b.responses.create(model=ALIAS, input="Go on.", previous_response_id=response.id,
                               max_output_tokens=4)
    assert info.value.body["code"] == "previous_response_not_found"
    assert info.value.body["param"] == "previous_response_id"
    oai.responses.delete(response.id)
    for gone in (lambda: oai.responses.retrieve(response.id),
                 lambda: oai.responses.delete(response.id),
                 lambda: oai.responses.input_items.list(response.id),
                 lambda: oai.responses.retrieve("resp_unknown")):
        with pytest.raises(openai.NotFoundError):
            gone()


def test_store_false_keeps_nothing(oai):
    response = oai.responses.create(model=ALIAS, input="Hi.", max_output_tokens=4, store=False,
                                    **GREEDY)
    assert response.store is False and response.output_text
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(response.id)


def test_max_output_tokens_ends_the_response_incomplete(oai):
    response = oai.responses.create(model=ALIAS, input="Count from one to a hundred.",
                                    max_output_tokens=3, **GREEDY)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools.0"),
    ({"background": True}, "background"),
    ({"extra_body": {"nonsense": 1}}, "nonsense"),
    ({"text": {"format": {"type": "json_schema", "name": "x",
                          "schema": {"type": "object", "properties": {"a": {"type": "strng"}}}}}},
     None),
    ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, "input.0"),
])
def test_bad_requests_are_400s_in_openai_s_shape(oai, kwargs, param):
    request = {"model": ALIAS, "input": "Hi.", "max_output_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(**request)
    body = info.value.body
    assert body["type"] == "invalid_request_error" and body["message"]
    if param is not None:
        assert body["param"] == param
    # greedy: two sampled tokens may be whitespace alone, an empty output_text
    assert oai.responses.create(model=ALIAS, input="Hi.", max_output_tokens=4, **GREEDY).output_text


def test_an_unknown_model_is_a_404(oai):
    with pytest.raises(openai.NotFoundError) as info:
        oai.responses.create(model="no-such-model", input="Hi.", max_output_tokens=2)
    assert info.value.body["code"] == "model_not_found"
