"""Python LLM frameworks against ``preheat serve``: LangChain, LlamaIndex, pydantic-ai, instructor
and LiteLLM, each through its own Anthropic (or OpenAI) integration, and the OpenAI Agents SDK
on its default Responses API model, with only the base URL changed.

The frameworks pin anthropic SDK versions that cannot share the project's venv (or each other's),
so ``make test`` installs them in two venvs of their own and exports their interpreters:

- ``PREHEAT_CLIENTS_PYTHON`` (``.venv-clients``, anthropic 2.x): langchain-anthropic,
  pydantic-ai-slim[anthropic], litellm, openai-agents;
- ``PREHEAT_CLIENTS_ANTHROPIC093_PYTHON`` (``.venv-clients-anthropic093``): instructor[anthropic],
  which pins anthropic==0.93.0, and llama-index-llms-anthropic, which breaks on anthropic 2.x
  (it instantiates ``MessageParam``, a ``Union`` there).

Each client runs once per module as a script in its venv: every scenario in it records its
result or its error, and one test checks each scenario. The embedded model's text is poor, so
the tests check protocol behaviour (text, usage, streamed parts, schemas, cache reads), never
wording. The server samples greedily by default and every client also asks for temperature 0.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from e2e_helpers import CLIENTS_KEY, CLIENTS_SERVER_ARGS, document, start_server
from pydantic import BaseModel


class City(BaseModel):
    """The scripts' structured-output model, to validate what they return."""
    name: str
    population: int


CLIENTS_PYTHON = os.environ.get("PREHEAT_CLIENTS_PYTHON")
ANTHROPIC093_PYTHON = os.environ.get("PREHEAT_CLIENTS_ANTHROPIC093_PYTHON")
KEY = CLIENTS_KEY
MODEL = "claude-sonnet-4-6"
# What the Makefile installs; a mismatch means a stale venv (delete it and run `make test`).
PINS = {
    "langchain-anthropic": "1.7.10", "pydantic-ai-slim": "2.68.0", "litellm": "1.110.2",
    "anthropic": "2.16.0", "openai-agents": "0.24.0",
}
PINS_ANTHROPIC093 = {
    "llama-index-llms-anthropic": "0.12.3", "llama-index-core": "0.14.25",
    "instructor": "1.17.0", "anthropic": "0.93.0",
}

# Shared head of every client script: reads its settings from stdin, runs each scenario
# (a function decorated with @scenario) at once and keeps its result or its error.
HARNESS = r'''
import json, sys, traceback, uuid
from importlib.metadata import version

from pydantic import BaseModel

ARGS = json.loads(sys.stdin.read())
BASE, KEY, MODEL, DOC = ARGS["base_url"], ARGS["key"], ARGS["model"], ARGS["document"]
RESULTS = {"versions": {name: version(name) for name in ARGS["packages"]}}

def scenario(fn):
    try:
        RESULTS[fn.__name__] = fn()
    except Exception as exc:
        RESULTS[fn.__name__] = {"error": f"{type(exc).__name__}: {exc}"[:2000],
                                "traceback": traceback.format_exc()[-4000:]}
    return fn

def fresh_document():
    """DOC behind a nonce of its own: no other scenario has cached this prefix."""
    return f"{uuid.uuid4().hex}\n{DOC}"


class City(BaseModel):
    name: str
    population: int
'''

FOOTER = r'''
print(json.dumps(RESULTS, default=str))
'''

LANGCHAIN = r'''
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool

def chat(max_tokens=16):
    return ChatAnthropic(model=MODEL, base_url=BASE, api_key=KEY, temperature=0,
                         max_tokens=max_tokens, max_retries=0, timeout=120)

def usage(message):
    return dict(message.usage_metadata)

@scenario
def invoke():
    reply = chat().invoke("Say hello.")
    return {"text": reply.content, "usage": usage(reply),
            "stop_reason": reply.response_metadata["stop_reason"]}

@scenario
def stream():
    chunks = list(chat().stream("Say hello."))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    return {"parts": [c.content for c in chunks], "text": whole.content, "usage": usage(whole)}

@scenario
def structured_function_calling():
    city = chat(80).with_structured_output(City).invoke("Name a city and its population.")
    return {"type": type(city).__name__, "object": city.model_dump()}

@scenario
def structured_json_schema():
    city = chat(80).with_structured_output(City, method="json_schema").invoke(
        "Name a city and its population.")
    return {"type": type(city).__name__, "object": city.model_dump()}

@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"

@scenario
def bind_tools():
    bound = chat(60).bind_tools([get_weather], tool_choice="get_weather", parallel_tool_calls=False)
    reply = bound.invoke("What is the weather in Oslo?")
    return {"tool_calls": reply.tool_calls, "stop_reason": reply.response_metadata["stop_reason"],
            "usage": usage(reply)}

@scenario
def cache():
    system = SystemMessage(content=[{"type": "text", "text": fresh_document(),
                                     "cache_control": {"type": "ephemeral"}}])
    turns = [chat(4).invoke([system, HumanMessage("Which license is this?")]) for _ in range(2)]
    return [usage(t) for t in turns]
'''

PYDANTIC_AI = r'''
from pydantic_ai import Agent, NativeOutput
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.providers.anthropic import AnthropicProvider

model = AnthropicModel(MODEL, provider=AnthropicProvider(base_url=BASE, api_key=KEY))

def usage(run):
    u = run.usage
    return {"requests": u.requests, "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens, "cache_read_tokens": u.cache_read_tokens,
            "cache_write_tokens": u.cache_write_tokens, "tool_calls": u.tool_calls}

@scenario
def text_output():
    run = Agent(model, model_settings={"temperature": 0, "max_tokens": 16}).run_sync("Say hello.")
    return {"output": run.output, "usage": usage(run)}

@scenario
def stream_text():
    agent = Agent(model, model_settings={"temperature": 0, "max_tokens": 16})
    with agent.run_stream_sync("Say hello.") as streamed:
        parts = list(streamed.stream_text(delta=True, debounce_by=None))
        output = streamed.get_output()
    return {"parts": parts, "output": output}

@scenario
def structured_output():
    agent = Agent(model, output_type=City, model_settings={"temperature": 0, "max_tokens": 80})
    run = agent.run_sync("Name a city and its population.")
    return {"type": type(run.output).__name__, "object": run.output.model_dump(),
            "usage": usage(run)}

@scenario
def native_output():
    # NativeOutput asks for the schema through output_config.format instead of an output tool
    agent = Agent(model, output_type=NativeOutput(City),
                  model_settings={"temperature": 0, "max_tokens": 80})
    run = agent.run_sync("Name a city and its population.")
    return {"type": type(run.output).__name__, "object": run.output.model_dump(),
            "usage": usage(run)}

TOOL_CALLS = []

def forced_tool_first(ctx):
    # Step 1 must call the tool (the 135M model would rarely choose to); step 2 answers in text.
    return {"temperature": 0, "max_tokens": 40, "parallel_tool_calls": False,
            "tool_choice": ["get_weather"] if ctx.run_step <= 1 else "none"}

tool_agent = Agent(model, model_settings=forced_tool_first)

@tool_agent.tool_plain
def get_weather(city: str) -> str:
    """The weather in a city."""
    TOOL_CALLS.append(city)
    return "sunny"

@scenario
def tool():
    run = tool_agent.run_sync("What is the weather in Oslo?")
    return {"output": run.output, "tool_calls": TOOL_CALLS, "usage": usage(run)}

@scenario
def cache():
    agent = Agent(model, instructions=fresh_document(), model_settings={
        "temperature": 0, "max_tokens": 4, "anthropic_cache_instructions": True})
    return [usage(agent.run_sync("Which license is this?")) for _ in range(2)]
'''

LITELLM = r'''
import os
import litellm

ANTHROPIC = {"model": "anthropic/" + MODEL, "api_base": BASE, "api_key": KEY}
OPENAI = {"model": "openai/" + MODEL, "api_base": BASE + "/v1", "api_key": KEY}
HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}

def usage(u):
    details = u.prompt_tokens_details
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens,
            "cached_tokens": details.cached_tokens if details else None}

def complete(route):
    reply = litellm.completion(**route, messages=HELLO, max_tokens=16, temperature=0)
    choice = reply.choices[0]
    return {"text": choice.message.content, "finish_reason": choice.finish_reason,
            "usage": usage(reply.usage)}

def stream(route):
    chunks = list(litellm.completion(**route, messages=HELLO, max_tokens=16, temperature=0,
                                     stream=True, stream_options={"include_usage": True}))
    parts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    built = litellm.stream_chunk_builder(chunks)
    return {"parts": parts, "text": built.choices[0].message.content,
            "usage": usage(built.usage)}

def tool_call(route):
    reply = litellm.completion(**route, max_tokens=60, temperature=0, tools=[WEATHER_TOOL],
                               parallel_tool_calls=False,
                               tool_choice={"type": "function",
                                            "function": {"name": "get_weather"}},
                               messages=[{"role": "user",
                                          "content": "What is the weather in Oslo?"}])
    choice = reply.choices[0]
    return {"finish_reason": choice.finish_reason,
            "calls": [[c.function.name, c.function.arguments]
                      for c in choice.message.tool_calls or []]}

def response_format(route):
    reply = litellm.completion(**route, max_tokens=80, temperature=0, response_format=City,
                               messages=[{"role": "user",
                                          "content": "Name a city and its population."}])
    city = City.model_validate_json(reply.choices[0].message.content)
    return {"type": type(city).__name__, "object": city.model_dump()}

def cache(route, marked):
    doc = fresh_document()
    system = ({"role": "system", "content": [{"type": "text", "text": doc,
                                              "cache_control": {"type": "ephemeral"}}]}
              if marked else {"role": "system", "content": doc})
    messages = [system, {"role": "user", "content": "Which license is this?"}]
    return [usage(litellm.completion(**route, messages=messages, max_tokens=4, temperature=0).usage)
            for _ in range(2)]

@scenario
def anthropic_completion():
    return complete(ANTHROPIC)

@scenario
def anthropic_stream():
    return stream(ANTHROPIC)

@scenario
def anthropic_tool_call():
    return tool_call(ANTHROPIC)

@scenario
def anthropic_response_format():
    return response_format(ANTHROPIC)

@scenario
def anthropic_cache():
    return cache(ANTHROPIC, marked=True)

@scenario
def openai_completion():
    return complete(OPENAI)

@scenario
def openai_stream():
    return stream(OPENAI)

@scenario
def openai_tool_call():
    return tool_call(OPENAI)

@scenario
def openai_response_format():
    return response_format(OPENAI)

@scenario
def openai_cache():
    return cache(OPENAI, marked=False)  # the Chat Completions endpoint caches prompts by itself
'''

OPENAI_AGENTS = r'''
import asyncio

from agents import (Agent, ModelSettings, Runner, function_tool, set_default_openai_client,
                    set_tracing_disabled)
from openai import AsyncOpenAI

set_tracing_disabled(True)  # traces would go to OpenAI
CALLS = []

def connect():
    """A client of its own for each run: an async client belongs to one event loop."""
    set_default_openai_client(AsyncOpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0,
                                          timeout=120), use_for_tracing=False)

@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    CALLS.append(city)
    return "sunny"

def agent(**settings):
    # the model name alone: the SDK's default model class, OpenAIResponsesModel. The first
    # turn must call the tool (the 135M model would rarely choose to); the SDK then resets
    # tool_choice, and the reply after the tool's output is text.
    return Agent(name="weather", instructions="Answer in one short sentence.", model=MODEL,
                 tools=[get_weather], model_settings=ModelSettings(
                     temperature=0, max_tokens=40, tool_choice="required", **settings))

def usage(result):
    u = result.context_wrapper.usage
    return {"requests": u.requests, "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cached_tokens": u.input_tokens_details.cached_tokens}

def summary(result):
    return {"output": result.final_output, "calls": list(CALLS),
            "response_ids": [r.response_id for r in result.raw_responses],
            "usage": usage(result)}

@scenario
def tool_run():
    CALLS.clear()
    connect()
    return summary(Runner.run_sync(agent(), "What is the weather in Oslo?"))

@scenario
def tool_run_chained():
    # each turn sends only its new items, continuing from the previous response on the server
    CALLS.clear()
    connect()
    result = Runner.run_sync(agent(), "What is the weather in Oslo?",
                             auto_previous_response_id=True)
    return summary(result)

@scenario
def streamed_run():
    CALLS.clear()
    async def run():
        connect()
        streamed = Runner.run_streamed(agent(), "What is the weather in Oslo?")
        deltas = [event.data.delta async for event in streamed.stream_events()
                  if event.type == "raw_response_event"
                  and event.data.type == "response.output_text.delta"]
        return {**summary(streamed), "deltas": deltas}
    return asyncio.run(run())
'''

LLAMA_INDEX = r'''
from llama_index.core.base.llms.types import CacheControl, CachePoint, TextBlock
from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.anthropic import Anthropic

def llm(max_tokens=16):
    return Anthropic(model=MODEL, base_url=BASE, api_key=KEY, temperature=0,
                     max_tokens=max_tokens, max_retries=0, timeout=120)

def usage(raw):
    u = raw["usage"] if isinstance(raw, dict) else raw.usage
    return u.model_dump() if hasattr(u, "model_dump") else dict(u)

@scenario
def complete():
    reply = llm().complete("Say hello.")
    return {"text": reply.text, "usage": usage(reply.raw)}

@scenario
def chat():
    reply = llm().chat([ChatMessage(role="system", content="Answer briefly."),
                        ChatMessage(role="user", content="Say hello.")])
    return {"text": reply.message.content, "role": str(reply.message.role.value),
            "usage": usage(reply.raw)}

@scenario
def stream_chat():
    parts, last = [], None
    for last in llm().stream_chat([ChatMessage(role="user", content="Say hello.")]):
        parts.append(last.delta)
    return {"parts": parts, "text": last.message.content}

@scenario
def structured_predict():
    city = llm(80).structured_predict(City, PromptTemplate("Name a city and its population."))
    return {"type": type(city).__name__, "object": city.model_dump()}

def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"

@scenario
def chat_with_tools():
    model = llm(60)
    reply = model.chat_with_tools([FunctionTool.from_defaults(fn=get_weather)],
                                  user_msg="What is the weather in Oslo?", tool_required=True)
    calls = model.get_tool_calls_from_response(reply, error_on_no_tool_call=True)
    return {"calls": [[c.tool_name, c.tool_kwargs] for c in calls],
            "stop_reason": reply.raw["stop_reason"]}

@scenario
def cache():
    message = ChatMessage(role="user", blocks=[
        TextBlock(text=fresh_document()), CachePoint(cache_control=CacheControl(type="ephemeral")),
        TextBlock(text="Which license is this?")])
    return [usage(llm(4).chat([message]).raw) for _ in range(2)]
'''

INSTRUCTOR = r'''
import anthropic
import instructor

client = instructor.from_anthropic(
    anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0, timeout=120))

@scenario
def response_model():
    city, raw = client.messages.create_with_completion(
        model=MODEL, max_tokens=80, temperature=0, max_retries=0, response_model=City,
        messages=[{"role": "user", "content": "Name a city and its population."}])
    return {"type": type(city).__name__, "object": city.model_dump(),
            "stop_reason": raw.stop_reason, "usage": raw.usage.model_dump()}

@scenario
def create_partial():
    partials = list(client.messages.create_partial(
        model=MODEL, max_tokens=80, temperature=0, max_retries=0, response_model=City,
        messages=[{"role": "user", "content": "Name a city and its population."}]))
    return {"count": len(partials), "last": partials[-1].model_dump()}

@scenario
def cache():
    system = [{"type": "text", "text": fresh_document(), "cache_control": {"type": "ephemeral"}}]
    usages = []
    for _ in range(2):
        _, raw = client.messages.create_with_completion(
            model=MODEL, max_tokens=80, temperature=0, max_retries=0, response_model=City,
            system=system, messages=[{"role": "user", "content": "Name a city from the text."}])
        usages.append(raw.usage.model_dump())
    return usages
'''


@pytest.fixture(scope="module")
def clients_server(server_logs):
    srv = start_server(server_logs, "clients-python", CLIENTS_SERVER_ARGS)
    yield srv
    srv.stop()


def run_client(python: str | None, env_var: str, body: str, packages: list[str], request) -> dict:
    if not python:
        pytest.skip(f"{env_var} is unset: run `make test`, which creates the clients' venvs "
                    "and exports their interpreters")
    server = request.getfixturevalue("clients_server")  # started only when a client will run
    settings = {"base_url": server.base_url, "key": KEY, "model": MODEL,
                "document": document(), "packages": packages}
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # no download at import
    done = subprocess.run([python, "-c", HARNESS + body + FOOTER], input=json.dumps(settings),
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def ok(results: dict, name: str):
    """One scenario's result; its error (with the client's traceback) fails the test."""
    result = results[name]
    if isinstance(result, dict) and "error" in result:
        pytest.fail(f"{name}: {result['error']}\n{result['traceback']}")
    return result


def check_text(text, usage_in: int, usage_out: int, max_tokens: int) -> None:
    assert isinstance(text, str) and text.strip()
    assert usage_in > 0 and 0 < usage_out <= max_tokens


def check_city(result: dict) -> None:
    """The client handed back a City (its own pydantic validation passed), and it validates here."""
    assert result["type"] == "City"
    City.model_validate(result["object"], strict=True)


def check_cache_read(written: int, read: int) -> None:
    assert written > 0, "the first call wrote nothing to the cache"
    assert read == written, f"the second call read {read} cached tokens, the first wrote {written}"


# --- LangChain ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def langchain(request):
    return run_client(CLIENTS_PYTHON, "PREHEAT_CLIENTS_PYTHON", LANGCHAIN,
                      ["langchain-anthropic", "anthropic"], request)


def test_langchain_version(langchain):
    assert langchain["versions"] == {k: PINS[k] for k in ("langchain-anthropic", "anthropic")}


def test_langchain_invoke(langchain):
    result = ok(langchain, "invoke")
    usage = result["usage"]
    check_text(result["text"], usage["input_tokens"], usage["output_tokens"], 16)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert result["stop_reason"] in ("end_turn", "max_tokens")


def test_langchain_stream(langchain):
    result = ok(langchain, "stream")
    assert len([p for p in result["parts"] if p]) > 1
    assert "".join(result["parts"]) == result["text"] != ""
    assert result["usage"]["input_tokens"] > 0 and 0 < result["usage"]["output_tokens"] <= 16


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_langchain_structured_output(langchain, method):
    check_city(ok(langchain, f"structured_{method}"))


def test_langchain_bind_tools(langchain):
    result = ok(langchain, "bind_tools")
    [call] = result["tool_calls"]
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    assert result["stop_reason"] == "tool_use"


def test_langchain_cache_read(langchain):
    first, second = ok(langchain, "cache")
    # LangChain counts the TTL breakdown's tokens under ephemeral_*, not under cache_creation
    written = sum(first["input_token_details"][key] for key in (
        "cache_creation", "ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"))
    check_cache_read(written, second["input_token_details"]["cache_read"])


# --- pydantic-ai -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pydantic_ai(request):
    return run_client(CLIENTS_PYTHON, "PREHEAT_CLIENTS_PYTHON", PYDANTIC_AI,
                      ["pydantic-ai-slim", "anthropic"], request)


def test_pydantic_ai_version(pydantic_ai):
    assert pydantic_ai["versions"] == {k: PINS[k] for k in ("pydantic-ai-slim", "anthropic")}


def test_pydantic_ai_text_output(pydantic_ai):
    result = ok(pydantic_ai, "text_output")
    usage = result["usage"]
    check_text(result["output"], usage["input_tokens"], usage["output_tokens"], 16)
    assert usage["requests"] == 1


def test_pydantic_ai_stream_text(pydantic_ai):
    result = ok(pydantic_ai, "stream_text")
    assert len(result["parts"]) > 1
    assert "".join(result["parts"]) == result["output"] != ""


def test_pydantic_ai_structured_output(pydantic_ai):
    result = ok(pydantic_ai, "structured_output")
    check_city(result)
    assert result["usage"]["requests"] == 1  # validated the first time: no retry


def test_pydantic_ai_native_output(pydantic_ai):
    result = ok(pydantic_ai, "native_output")
    check_city(result)
    assert result["usage"]["requests"] == 1


def test_pydantic_ai_tool(pydantic_ai):
    result = ok(pydantic_ai, "tool")
    [city] = result["tool_calls"]
    assert isinstance(city, str)
    assert isinstance(result["output"], str) and result["output"].strip()
    assert result["usage"]["requests"] == 2 and result["usage"]["tool_calls"] == 1


def test_pydantic_ai_cache_read(pydantic_ai):
    first, second = ok(pydantic_ai, "cache")
    check_cache_read(first["cache_write_tokens"], second["cache_read_tokens"])


# --- LiteLLM -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def litellm(request):
    return run_client(CLIENTS_PYTHON, "PREHEAT_CLIENTS_PYTHON", LITELLM, ["litellm"],
                      request)


def test_litellm_version(litellm):
    assert litellm["versions"] == {"litellm": PINS["litellm"]}


@pytest.mark.parametrize("route", ["anthropic", "openai"])
def test_litellm_completion(litellm, route):
    result = ok(litellm, f"{route}_completion")
    usage = result["usage"]
    check_text(result["text"], usage["prompt_tokens"], usage["completion_tokens"], 16)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert result["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("route", ["anthropic", "openai"])
def test_litellm_stream(litellm, route):
    result = ok(litellm, f"{route}_stream")
    assert len(result["parts"]) > 1
    assert "".join(result["parts"]) == result["text"] != ""
    assert result["usage"]["prompt_tokens"] > 0 and 0 < result["usage"]["completion_tokens"] <= 16


@pytest.mark.parametrize("route", ["anthropic", "openai"])
def test_litellm_tool_call(litellm, route):
    result = ok(litellm, f"{route}_tool_call")
    [[name, arguments]] = result["calls"]
    assert name == "get_weather" and isinstance(json.loads(arguments)["city"], str)
    assert result["finish_reason"] == "tool_calls"


# the anthropic route sends the structured-outputs beta's top-level `output_format`
@pytest.mark.parametrize("route", ["anthropic", "openai"])
def test_litellm_response_format(litellm, route):
    check_city(ok(litellm, f"{route}_response_format"))


@pytest.mark.parametrize("route", ["anthropic", "openai"])
def test_litellm_cache_read(litellm, route):
    first, second = ok(litellm, f"{route}_cache")
    assert not first["cached_tokens"]
    assert 0 < second["cached_tokens"] < second["prompt_tokens"]
    assert second["prompt_tokens"] == first["prompt_tokens"]


# --- OpenAI Agents SDK -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def openai_agents(request):
    return run_client(CLIENTS_PYTHON, "PREHEAT_CLIENTS_PYTHON", OPENAI_AGENTS,
                      ["openai-agents"], request)


def test_openai_agents_version(openai_agents):
    assert openai_agents["versions"] == {"openai-agents": PINS["openai-agents"]}


@pytest.mark.parametrize("run", ["tool_run", "tool_run_chained", "streamed_run"])
def test_openai_agents_run_calls_the_tool_and_answers(openai_agents, run):
    result = ok(openai_agents, run)
    [city] = result["calls"]  # the tool ran once, with the model's argument
    assert isinstance(city, str) and city
    assert isinstance(result["output"], str) and result["output"].strip()
    ids = result["response_ids"]
    assert len(ids) == 2 and all(i.startswith("resp_") for i in ids)
    assert result["usage"]["requests"] == 2 and result["usage"]["output_tokens"] > 0


def test_openai_agents_chained_turn_reads_the_first_from_the_cache(openai_agents):
    usage = ok(openai_agents, "tool_run_chained")["usage"]
    # turn 2 continued on the KV held for turn 1: its prompt (all of turn 2's but the tool's
    # output) was read from the cache
    assert usage["cached_tokens"] > usage["input_tokens"] / 4


def test_openai_agents_stream_sends_text_deltas(openai_agents):
    result = ok(openai_agents, "streamed_run")
    assert "".join(result["deltas"]) == result["output"]


# --- LlamaIndex --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_index(request):
    return run_client(ANTHROPIC093_PYTHON, "PREHEAT_CLIENTS_ANTHROPIC093_PYTHON", LLAMA_INDEX,
                      ["llama-index-llms-anthropic", "llama-index-core", "anthropic"], request)


def test_llama_index_version(llama_index):
    assert llama_index["versions"] == {k: PINS_ANTHROPIC093[k] for k in (
        "llama-index-llms-anthropic", "llama-index-core", "anthropic")}


def test_llama_index_complete(llama_index):
    result = ok(llama_index, "complete")
    usage = result["usage"]
    check_text(result["text"], usage["input_tokens"], usage["output_tokens"], 16)


def test_llama_index_chat(llama_index):
    result = ok(llama_index, "chat")
    usage = result["usage"]
    check_text(result["text"], usage["input_tokens"], usage["output_tokens"], 16)
    assert result["role"] == "assistant"


def test_llama_index_stream_chat(llama_index):
    result = ok(llama_index, "stream_chat")
    assert len([p for p in result["parts"] if p]) > 1
    assert "".join(result["parts"]) == result["text"] != ""


def test_llama_index_structured_predict(llama_index):
    check_city(ok(llama_index, "structured_predict"))


def test_llama_index_chat_with_tools(llama_index):
    result = ok(llama_index, "chat_with_tools")
    [[name, arguments]] = result["calls"]
    assert name == "get_weather" and isinstance(arguments["city"], str)
    assert result["stop_reason"] == "tool_use"


def test_llama_index_cache_read(llama_index):
    first, second = ok(llama_index, "cache")
    check_cache_read(first["cache_creation_input_tokens"], second["cache_read_input_tokens"])


# --- instructor --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def instructor(request):
    return run_client(ANTHROPIC093_PYTHON, "PREHEAT_CLIENTS_ANTHROPIC093_PYTHON", INSTRUCTOR,
                      ["instructor", "anthropic"], request)


def test_instructor_version(instructor):
    assert instructor["versions"] == {k: PINS_ANTHROPIC093[k] for k in ("instructor", "anthropic")}


def test_instructor_response_model(instructor):
    result = ok(instructor, "response_model")
    check_city(result)
    assert result["stop_reason"] == "tool_use"
    assert result["usage"]["input_tokens"] > 0 and 0 < result["usage"]["output_tokens"] <= 80


def test_instructor_create_partial(instructor):
    result = ok(instructor, "create_partial")
    assert result["count"] > 1  # the object grew as the tool input streamed
    City.model_validate(result["last"])


def test_instructor_cache_read(instructor):
    first, second = ok(instructor, "cache")
    check_cache_read(first["cache_creation_input_tokens"], second["cache_read_input_tokens"])
