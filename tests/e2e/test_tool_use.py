"""Tool use and structured output through the official SDK against the embedded model.

The model chooses the content; the grammar guarantees the shape: every input
validates against its schema, whatever a 135M model would write unconstrained.
"""
from __future__ import annotations

import asyncio
import json
from typing import Literal

import anthropic
import jsonschema
import pytest
from e2e_helpers import ALIAS, GREEDY, document
from pydantic import BaseModel
from schema_gen import tool_schema

FORMATS = jsonschema.FormatChecker()
WEATHER = {"name": "get_weather", "description": "The current weather in a city",
           "input_schema": {"type": "object", "properties": {
               "city": {"type": "string", "description": "City name"},
               "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}
TIME = {"name": "get_time", "description": "The local time in a timezone",
        "input_schema": {"type": "object", "properties": {
            "timezone": {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Z][a-z]+$"}},
            "required": ["timezone"]}}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]
ONE_CALL = {"type": "any", "disable_parallel_tool_use": True}


def validate(block, tools: list[dict]) -> None:
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    schema = next(t["input_schema"] for t in tools if t["name"] == block.name)
    jsonschema.validate(block.input, schema, format_checker=FORMATS)


async def test_forced_calls_over_generated_schemas_always_validate(async_client):
    async def call(seed: int) -> None:
        tool = {"name": f"tool_{seed}", "description": "Runs the task",
                "input_schema": tool_schema(seed)}
        message = await async_client.messages.create(
            model=ALIAS, max_tokens=400, tools=[tool], tool_choice=ONE_CALL,
            messages=[{"role": "user", "content": f"Run task number {seed}."}], extra_body=GREEDY)
        assert message.stop_reason == "tool_use", (seed, message.content)
        assert len(message.content) == 1
        validate(message.content[0], [tool])

    await asyncio.gather(*[call(seed) for seed in range(32)])


def test_any_with_several_tools_picks_one_of_them(client):
    tools = [WEATHER, TIME]
    message = client.messages.create(model=ALIAS, max_tokens=300, tools=tools,
                                     tool_choice={"type": "any"}, messages=ASK, extra_body=GREEDY)
    calls = [b for b in message.content if b.type == "tool_use"]
    assert calls and all(b.type == "tool_use" for b in message.content)
    assert message.stop_reason == "tool_use"  # parallel calls end: none repeats another
    assert_distinct(calls)
    for block in calls:
        validate(block, tools)


def assert_distinct(calls) -> None:
    seen = [(b.name, json.dumps(b.input, sort_keys=True)) for b in calls]
    assert len(set(seen)) == len(seen), seen


def test_a_named_tool_is_the_one_called(client):
    message = client.messages.create(
        model=ALIAS, max_tokens=200, tools=[WEATHER, TIME],
        tool_choice={"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
        messages=ASK, extra_body=GREEDY)
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.name == "get_time"
    validate(block, [TIME])


def test_round_trip_with_tool_results(client):
    first = client.messages.create(model=ALIAS, max_tokens=200, tools=[WEATHER],
                                   tool_choice=ONE_CALL, messages=ASK, extra_body=GREEDY)
    [call] = first.content
    history = ASK + [{"role": "assistant", "content": first.content}]
    for result in ("18 degrees and sunny",
                   [{"type": "text", "text": "service unavailable"}]):
        reply = client.messages.create(
            model=ALIAS, max_tokens=40, tools=[WEATHER], extra_body=GREEDY,
            messages=history + [{"role": "user", "content": [{
                "type": "tool_result", "tool_use_id": call.id, "content": result,
                "is_error": isinstance(result, list)}]}])
        assert reply.stop_reason in ("end_turn", "max_tokens", "tool_use")
        assert reply.content and reply.usage.output_tokens > 0


def test_auto_lets_the_model_decide_and_holds_its_call_to_the_schema(client):
    """After three turns that used the tool, the small model calls it of its own accord."""
    history = []
    for city in ("Oslo", "Rome", "Lima"):
        history += [
            {"role": "user", "content": f"What's the weather in {city}?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{city}",
                                               "name": "get_weather", "input": {"city": city}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{city}",
                                          "content": "Sunny, 20 degrees"}]},
            {"role": "assistant", "content": f"It is sunny and 20 degrees in {city}."}]
    with client.messages.stream(
            model=ALIAS, max_tokens=80, tools=[WEATHER], extra_body=GREEDY,
            messages=history + [{"role": "user", "content": "What's the weather in Tokyo?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    call = final.content[-1]
    validate(call, [WEATHER])
    assert call.input["city"] == "Tokyo"


def test_choice_none_gives_text_only(client):
    message = client.messages.create(model=ALIAS, max_tokens=60, tools=[WEATHER],
                                     tool_choice={"type": "none"}, messages=ASK,
                                     extra_body=GREEDY)
    assert [b.type for b in message.content] == ["text"]
    assert message.stop_reason != "tool_use"


def test_streaming_a_call_with_the_sdk_helpers(client):
    events = []
    with client.messages.stream(model=ALIAS, max_tokens=200, tools=[WEATHER, TIME],
                                tool_choice=ONE_CALL, messages=ASK, extra_body=GREEDY) as stream:
        for event in stream:
            events.append(event)
        final = stream.get_final_message()
    starts = [e for e in events if e.type == "content_block_start"]
    assert [s.content_block.type for s in starts] == ["tool_use"]
    assert starts[0].content_block.input == {}
    pieces = [e.delta.partial_json for e in events
              if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert len(pieces) > 1  # streamed as written, not in one piece at the end
    assert final.stop_reason == "tool_use"
    [block] = final.content
    assert json.loads("".join(pieces)) == block.input
    validate(block, [WEATHER, TIME])


async def test_async_streaming_call(async_client):
    async with async_client.messages.stream(model=ALIAS, max_tokens=200, tools=[WEATHER],
                                            tool_choice=ONE_CALL, messages=ASK,
                                            extra_body=GREEDY) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    validate(final.content[0], [WEATHER])


class Person(BaseModel):
    # the SDK moves bounds such as max_length into descriptions: Anthropic's structured
    # outputs don't take them, so an unbounded list of strings could run to max_tokens here
    name: str
    age: int
    mood: Literal["happy", "sad", "calm"]


def test_structured_output_through_messages_parse(client):
    parsed = client.messages.parse(model=ALIAS, max_tokens=300, output_format=Person,
                                   messages=[{"role": "user", "content": "Invent a person."}],
                                   extra_body=GREEDY)
    assert parsed.stop_reason == "end_turn"
    [block] = parsed.content
    assert isinstance(block.parsed_output, Person)
    assert Person.model_validate_json(block.text) == block.parsed_output


async def test_structured_output_streams_as_text(async_client):
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]},
                                               "confidence": {"type": "integer", "minimum": 0,
                                                              "maximum": 10}},
              "required": ["answer", "confidence"]}
    async with async_client.messages.stream(
            model=ALIAS, max_tokens=100, messages=[{"role": "user", "content": "Is water wet?"}],
            output_config={"format": {"type": "json_schema", "schema": schema}},
            extra_body=GREEDY) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    jsonschema.validate(json.loads(text), schema)
    assert final.content[0].text == text


@pytest.mark.parametrize(("tool", "expected"), [
    ({"name": "t", "input_schema": {"type": "object", "properties": {"a": {"type": "strng"}}}},
     "tools.0.input_schema.properties.a.type: invalid JSON schema"),
    # a strict tool is held to all of its schema; a plain one is loosened (test_output_grammar)
    ({"name": "t", "strict": True, "input_schema": {"type": "object", "properties": {
        "a": {"type": "string", "not": {"const": "x"}}}}},
     "tools.0.input_schema: this JSON schema uses features that constrained decoding cannot "
     "enforce"),
])
def test_bad_and_unsupported_schemas_are_400s(client, tool, expected):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=ALIAS, max_tokens=20, tools=[tool], messages=ASK)
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert info.value.body["error"]["message"].startswith(expected)
    for check in (lambda: client.messages.count_tokens(model=ALIAS, tools=[tool], messages=ASK),
                  lambda: client.messages.create(model=ALIAS, max_tokens=0, tools=[tool],
                                                 messages=ASK)):  # a pre-warm too
        with pytest.raises(anthropic.BadRequestError, match="input_schema"):
            check()
    assert client.messages.create(model=ALIAS, max_tokens=2, messages=ASK).content


def test_a_prefill_cannot_open_a_forced_call_or_structured_reply(client):
    prefilled = ASK + [{"role": "assistant", "content": "Sure"}]
    for fields in ({"tools": [WEATHER], "tool_choice": {"type": "any"}},
                   {"output_config": {"format": {"type": "json_schema", "schema": {
                       "type": "object", "properties": {}}}}}):
        with pytest.raises(anthropic.BadRequestError, match="prefill"):
            client.messages.create(model=ALIAS, max_tokens=20, messages=prefilled, **fields)
    auto = client.messages.create(model=ALIAS, max_tokens=5, tools=[WEATHER],
                                  messages=prefilled, extra_body=GREEDY)
    assert auto.content


async def test_constrained_streams_beside_free_ones_are_valid_and_leave_them_unchanged(
        async_client):
    free = [{"role": "user", "content": f"Tell me about the number {i}."} for i in range(4)]

    async def free_text(i: int) -> str:
        message = await async_client.messages.create(model=ALIAS, max_tokens=30,
                                                     messages=[free[i]], extra_body=GREEDY)
        return message.content[0].text

    async def constrained(i: int):
        async with async_client.messages.stream(
                model=ALIAS, max_tokens=300, tools=[WEATHER, TIME], tool_choice=ONE_CALL,
                messages=[{"role": "user", "content": f"Question {i}: weather or time?"}],
                extra_body=GREEDY) as stream:
            return await stream.get_final_message()

    alone = [await free_text(i) for i in range(4)]
    results = await asyncio.gather(*[constrained(i) for i in range(8)],
                                   *[free_text(i) for i in range(4)])
    for message in results[:8]:
        assert message.stop_reason == "tool_use"
        validate(message.content[0], [WEATHER, TIME])
    assert list(results[8:]) == alone


def test_cached_tools_hit_across_tool_choices_and_the_call_repeats(client):
    """Tool definitions stay the first cached segment; a grammar never changes the prefix."""
    tools = [WEATHER, {**TIME, "description": document(150),
                       "cache_control": {"type": "ephemeral"}}]
    ask = {"model": ALIAS, "max_tokens": 200, "tools": tools, "messages": ASK,
           "extra_body": GREEDY}
    cold = client.messages.create(tool_choice=ONE_CALL, **ask)
    written = cold.usage.cache_creation_input_tokens
    assert written > 0 and cold.usage.cache_read_input_tokens == 0
    text = client.messages.create(tool_choice={"type": "none"}, **{**ask, "max_tokens": 5})
    assert text.usage.cache_read_input_tokens == written
    hit = client.messages.create(tool_choice=ONE_CALL, **ask)
    assert hit.usage.cache_read_input_tokens == written
    assert hit.usage.cache_creation_input_tokens == 0
    assert [(b.name, b.input) for b in hit.content] == [(b.name, b.input) for b in cold.content]


ORDER = {"name": "place_order", "description": "Place an order for an item",
         "input_schema": {"type": "object", "properties": {
             "item": {"type": "string"}, "quantity": {"type": "integer"},
             "price": {"type": "number"}}, "required": ["item", "quantity"]}}


@pytest.mark.parametrize(("tools", "choice", "question"), [
    ([WEATHER], {"type": "tool", "name": "get_weather"}, "What's the weather in Paris?"),
    ([ORDER], {"type": "any"}, "Order 3 apples at 0.5 dollars each."),
    ([ORDER, WEATHER], {"type": "any"}, "Buy 12 pears, then tell me the weather in Oslo."),
    ([WEATHER, TIME], {"type": "auto"}, "What's the time in Europe/Paris and the weather in Rome?"),
])
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_parallel_calls_end_with_tool_use_and_never_repeat(client, tools, choice, question, stream):
    kwargs = dict(model=ALIAS, max_tokens=300, tools=tools, tool_choice=choice,
                  messages=[{"role": "user", "content": question}], extra_body=GREEDY)
    if stream:
        with client.messages.stream(**kwargs) as events:
            starts = [e for e in events if e.type == "content_block_start"]
            message = events.get_final_message()
        assert len(starts) == len(message.content)  # a held-back repeat never reached the client
    else:
        message = client.messages.create(**kwargs)
    calls = [b for b in message.content if b.type == "tool_use"]
    if choice["type"] != "auto" or calls:
        assert message.stop_reason == "tool_use" and calls
    assert_distinct(calls)
    for block in calls:
        validate(block, tools)
    assert message.usage.output_tokens < 300


class City(BaseModel):
    name: str
    country: str
    population: int
    area_km2: float


def test_a_structured_reply_with_unbounded_numbers_ends_as_valid_json(client):
    parsed = client.messages.parse(model=ALIAS, max_tokens=300, output_format=City,
                                   messages=[{"role": "user", "content": "Tell me about Paris as JSON."}],
                                   extra_body=GREEDY)
    assert parsed.stop_reason == "end_turn"
    city = parsed.parsed_output
    assert isinstance(city, City) and abs(city.population) < 2**63


def test_the_tool_runner_runs_its_tool_with_parallel_calls_allowed(client):
    asked = []

    @anthropic.beta_tool
    def get_weather(city: str) -> str:
        """The current weather in a city.

        Args:
            city: the city's name
        """
        asked.append(city)
        return f"Sunny, 21 degrees in {city}."

    runner = client.beta.messages.tool_runner(
        model=ALIAS, max_tokens=200, tools=[get_weather], max_iterations=3,
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tool_choice={"type": "any"}, extra_body=GREEDY)
    replies = list(runner)
    assert replies[0].stop_reason == "tool_use" and asked  # the tool ran
    assert all(r.stop_reason in ("tool_use", "end_turn") for r in replies)


def test_a_call_cut_off_by_max_tokens_says_max_tokens(client):
    message = client.messages.create(model=ALIAS, max_tokens=12, tools=[ORDER],
                                     tool_choice={"type": "any"}, extra_body=GREEDY,
                                     messages=[{"role": "user", "content": "Order 3 apples."}])
    assert message.stop_reason == "max_tokens"  # never presented as a finished turn of calls
