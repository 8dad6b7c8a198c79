"""The OpenAI-compatible endpoint through the official ``openai`` SDK against the embedded model.

Same engine, same prompt cache and the same grammars as the Messages API: tool calls and
structured replies validate against their schemas, and a repeated prefix is read from the
cache with the cold run's greedy tokens.
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import jsonschema
import openai
import pytest
from e2e_helpers import ALIAS, KEY_A, MIN_CACHE_TOKENS, document
from pydantic import BaseModel

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a timezone",
    "parameters": {"type": "object", "properties": {
        "timezone": {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Z][a-z]+$"}},
        "required": ["timezone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]
GREEDY = {"temperature": 0}


@pytest.fixture
def oai(server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY_A, max_retries=0,
                       timeout=120) as client:
        yield client


@pytest.fixture
def async_oai(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=KEY_A, max_retries=0,
                              timeout=120)


def validate_call(call, tools: list[dict]) -> dict:
    """The call's arguments, checked against its function's schema."""
    assert call.type == "function" and call.id.startswith("call_")
    schema = next(t["function"]["parameters"] for t in tools
                  if t["function"]["name"] == call.function.name)
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, schema, format_checker=jsonschema.FormatChecker())
    return arguments


def check_usage(usage) -> None:
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 <= usage.prompt_tokens_details.cached_tokens <= usage.prompt_tokens


def test_a_completion(oai):
    completion = oai.chat.completions.create(
        model=ALIAS, max_completion_tokens=12, messages=[
            {"role": "developer", "content": "Answer in one short sentence."},
            {"role": "user", "content": "Name a colour."}], **GREEDY)
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == ALIAS
    [choice] = completion.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")
    check_usage(completion.usage)
    assert completion.usage.completion_tokens <= 12


async def test_async_and_sync_greedy_replies_are_equal(oai, async_oai):
    fields = {"model": ALIAS, "max_tokens": 10, "messages": ASK, **GREEDY}
    async with async_oai:
        asynchronous = await async_oai.chat.completions.create(**fields)
    synchronous = oai.chat.completions.create(**fields)
    assert asynchronous.choices[0].message.content == synchronous.choices[0].message.content


def test_streaming_with_usage_gives_the_same_reply(oai):
    fields = {"model": ALIAS, "max_tokens": 16, "messages": ASK, **GREEDY}
    whole = oai.chat.completions.create(**fields)
    chunks = list(oai.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **fields))
    assert {c.id for c in chunks} == {chunks[0].id}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == (
        whole.choices[0].finish_reason)
    *body, last = chunks
    assert last.choices == [] and all(c.usage is None for c in body)
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens


def test_a_seed_makes_a_sampled_reply_reproducible(oai):
    fields = {"model": ALIAS, "max_tokens": 8, "messages": ASK, "temperature": 1.5, "seed": 11}
    first, second = (oai.chat.completions.create(**fields) for _ in range(2))
    assert first.choices[0].message.content == second.choices[0].message.content


def test_required_makes_one_valid_call(oai):
    completion = oai.chat.completions.create(
        model=ALIAS, max_tokens=100, messages=ASK, tools=[WEATHER, TIME],
        tool_choice="required", parallel_tool_calls=False, **GREEDY)
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    validate_call(call, [WEATHER, TIME])


def test_a_named_function_is_the_one_called(oai):
    completion = oai.chat.completions.create(
        model=ALIAS, max_tokens=100, messages=ASK, tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False, **GREEDY)
    [call] = completion.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    validate_call(call, [TIME])


def test_a_tool_result_round_trip(oai):
    first = oai.chat.completions.create(
        model=ALIAS, max_tokens=100, messages=ASK, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False, **GREEDY)
    message = first.choices[0].message
    [call] = message.tool_calls
    history = [*ASK, message,  # the SDK's own object, sent back as it came
               {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"}]
    reply = oai.chat.completions.create(model=ALIAS, max_tokens=30, messages=history,
                                        tools=[WEATHER], **GREEDY)
    [choice] = reply.choices
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls
    assert reply.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result
    check_usage(reply.usage)


def test_streamed_calls_accumulate_in_the_sdk_helper(oai):
    tools = [WEATHER, TIME]
    with oai.chat.completions.stream(model=ALIAS, max_tokens=100, messages=ASK, tools=tools,
                                     tool_choice="required", parallel_tool_calls=False,
                                     **GREEDY) as stream:
        pieces = [e.arguments_delta for e in stream
                  if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert len(pieces) > 1  # streamed as written, not in one piece at the end
    assert json.loads("".join(pieces)) == validate_call(call, tools)
    assert final.choices[0].finish_reason == "tool_calls"


class City(BaseModel):
    name: str
    country: str
    population: int


def test_json_schema_replies_validate(oai):
    schema = City.model_json_schema()
    ask = "Describe {} as JSON with name, country, population."
    completion = oai.chat.completions.create(
        model=ALIAS, max_tokens=80, messages=[{"role": "user", "content": ask.format("Paris")}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "city", "schema": schema, "strict": True}},
        **GREEDY)
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content), schema)
    parsed = oai.chat.completions.parse(
        model=ALIAS, max_tokens=80, messages=[{"role": "user", "content": ask.format("Rome")}],
        response_format=City, **GREEDY)
    assert isinstance(parsed.choices[0].message.parsed, City)


def test_a_repeated_prefix_is_read_from_the_cache_with_the_same_reply(oai):
    messages = [{"role": "system", "content": document()},
                {"role": "user", "content": "Which license is this?"}]
    first, second = (oai.chat.completions.create(model=ALIAS, max_tokens=12, messages=messages,
                                                 **GREEDY) for _ in range(2))
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert first.usage.prompt_tokens_details.cache_write_tokens >= MIN_CACHE_TOKENS
    assert second.usage.prompt_tokens_details.cached_tokens >= MIN_CACHE_TOKENS
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert second.choices[0].message.content == first.choices[0].message.content
    # a new question after the same system prompt reads the system prompt's entry
    other = oai.chat.completions.create(
        model=ALIAS, max_tokens=1, **GREEDY,
        messages=[messages[0], {"role": "user", "content": "Who wrote it?"}])
    assert other.usage.prompt_tokens_details.cached_tokens >= MIN_CACHE_TOKENS


def test_errors_raise_the_sdk_exceptions(oai, server):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=ALIAS, max_tokens=5, messages=ASK, n=2)
    assert (info.value.param, info.value.code) == ("n", "unsupported_parameter")
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=ALIAS, max_tokens=5, messages=[
            {"role": "user", "content": [{"type": "image_url",
                                          "image_url": {"url": "https://example.com/a.png"}}]}])
    assert "not supported" in info.value.message
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="gpt-5", max_tokens=5, messages=ASK)
    assert info.value.code == "model_not_found"
    wrong_key = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong_key.chat.completions.create(model=ALIAS, max_tokens=5, messages=ASK)
    assert info.value.code == "invalid_api_key"


def test_models_answer_both_sdks(oai, client):
    models = oai.models.list()
    ids = [m.id for m in models]
    assert ids == [m.id for m in client.models.list().data] and ALIAS in ids
    assert all(m.object == "model" and m.owned_by for m in models)
    assert oai.models.retrieve(ALIAS).id == ALIAS
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-5")
    assert isinstance(client.models.retrieve(ALIAS), anthropic.types.ModelInfo)
