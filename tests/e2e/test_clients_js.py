"""JavaScript clients against ``preheat serve``: the TypeScript SDK (``@anthropic-ai/sdk``) and the
Vercel AI SDK (``ai`` with ``@ai-sdk/anthropic``), each with only its base URL changed.

The packages are installed from npm (pinned versions, once, into the test cache); skipped where
there is no ``npm``. One Node script runs every scenario once per module and records its result
or its error; one test checks each scenario. The embedded model's text is poor, so the tests
check protocol behaviour (text, usage, streamed parts, schemas, cache reads), never wording.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from e2e_helpers import CLIENTS_KEY, CLIENTS_SERVER_ARGS, document, start_server

PACKAGES = {"@anthropic-ai/sdk": "1.15.0", "ai": "6.0.325", "@ai-sdk/anthropic": "3.0.140",
            "zod": "4.6.7"}
KEY = CLIENTS_KEY
MODEL = "claude-sonnet-4-6"

SCRIPT = r'''
const crypto = require("crypto");
const AnthropicModule = require("@anthropic-ai/sdk");
const Anthropic = AnthropicModule.default ?? AnthropicModule;
const { zodOutputFormat } = require("@anthropic-ai/sdk/helpers/zod");
const { generateText, streamText, generateObject, streamObject, tool } = require("ai");
const { createAnthropic } = require("@ai-sdk/anthropic");
const { z } = require("zod");

const ARGS = JSON.parse(require("fs").readFileSync(0, "utf8"));
const { base_url: BASE, key: KEY, model: MODEL, document: DOC } = ARGS;
const RESULTS = {};
const freshDocument = () => `${crypto.randomUUID()}\n${DOC}`;  // a prefix nothing else cached

async function scenario(name, fn) {
  try {
    RESULTS[name] = await fn();
  } catch (error) {
    RESULTS[name] = { error: `${error.name}: ${error.message}`.slice(0, 2000),
                      traceback: String(error.stack).slice(-4000),
                      responseBody: error.responseBody ?? null };
  }
}

const City = z.object({ name: z.string(), population: z.number().int() });
const HELLO = [{ role: "user", content: "Say hello." }];

(async () => {
  // --- the TypeScript SDK ---
  const client = new Anthropic({ baseURL: BASE, apiKey: KEY, maxRetries: 0 });

  await scenario("sdk_stream", async () => {
    const parts = [];
    const stream = client.messages.stream({ model: MODEL, max_tokens: 16, temperature: 0,
                                            messages: HELLO })
      .on("text", (text) => parts.push(text));
    const message = await stream.finalMessage();
    return { parts, message };
  });

  await scenario("sdk_create", async () =>
    client.messages.create({ model: MODEL, max_tokens: 16, temperature: 0, messages: HELLO }));

  await scenario("sdk_stream_tool", async () => {
    const jsonParts = [], snapshots = [];
    const stream = client.messages.stream({
      model: MODEL, max_tokens: 60, temperature: 0,
      tools: [{ name: "get_weather", description: "The weather in a city.",
                input_schema: { type: "object", properties: { city: { type: "string" } },
                                required: ["city"] } }],
      tool_choice: { type: "tool", name: "get_weather", disable_parallel_tool_use: true },
      messages: [{ role: "user", content: "What is the weather in Oslo?" }],
    }).on("inputJson", (delta, snapshot) => { jsonParts.push(delta); snapshots.push(snapshot); });
    return { jsonParts, snapshots, message: await stream.finalMessage() };
  });

  await scenario("sdk_parse", async () => {
    const reply = await client.messages.parse({
      model: MODEL, max_tokens: 80, temperature: 0,
      output_config: { format: zodOutputFormat(City) },
      messages: [{ role: "user", content: "Name a city and its population." }] });
    return { parsed: reply.parsed_output, valid: City.safeParse(reply.parsed_output).success,
             stop_reason: reply.stop_reason };
  });

  await scenario("sdk_cache", async () => {
    const system = [{ type: "text", text: freshDocument(), cache_control: { type: "ephemeral" } }];
    const usages = [];
    for (let i = 0; i < 2; i++) {
      const reply = await client.messages.create({
        model: MODEL, max_tokens: 4, temperature: 0, system,
        messages: [{ role: "user", content: "Which license is this?" }] });
      usages.push(reply.usage);
    }
    return usages;
  });

  // --- the Vercel AI SDK ---
  const anthropic = createAnthropic({ baseURL: BASE + "/v1", apiKey: KEY });
  const model = anthropic(MODEL);
  const common = { model, temperature: 0, maxRetries: 0 };

  await scenario("ai_generate_text", async () => {
    const r = await generateText({ ...common, prompt: "Say hello.", maxOutputTokens: 16 });
    return { text: r.text, usage: r.usage, finishReason: r.finishReason };
  });

  await scenario("ai_stream_text", async () => {
    let streamError = null;
    const r = streamText({ ...common, prompt: "Say hello.", maxOutputTokens: 16,
                           onError: ({ error }) => { streamError = String(error); } });
    const parts = [];
    for await (const part of r.textStream) parts.push(part);
    return { parts, text: await r.text, usage: await r.usage,
             finishReason: await r.finishReason, streamError };
  });

  for (const mode of ["outputFormat", "jsonTool"]) {
    await scenario(`ai_generate_object_${mode}`, async () => {
      const r = await generateObject({
        ...common, schema: City, prompt: "Name a city and its population.", maxOutputTokens: 80,
        providerOptions: { anthropic: { structuredOutputMode: mode } } });
      return { object: r.object, valid: City.safeParse(r.object).success, usage: r.usage,
               finishReason: r.finishReason };
    });
  }

  await scenario("ai_stream_object", async () => {
    const r = streamObject({ ...common, schema: City, prompt: "Name a city and its population.",
                             maxOutputTokens: 80 });
    const partials = [];
    for await (const partial of r.partialObjectStream) partials.push(partial);
    const object = await r.object;
    return { partials: partials.length, object, valid: City.safeParse(object).success,
             usage: await r.usage };
  });

  await scenario("ai_tool_call", async () => {
    const calls = [];
    const r = await generateText({
      ...common, maxOutputTokens: 60, prompt: "What is the weather in Oslo?",
      tools: { get_weather: tool({
        description: "The weather in a city.", inputSchema: z.object({ city: z.string() }),
        execute: async ({ city }) => { calls.push(city); return "sunny"; } }) },
      toolChoice: { type: "tool", toolName: "get_weather" },
      providerOptions: { anthropic: { disableParallelToolUse: true } } });
    return { calls, toolCalls: r.toolCalls.map((c) => ({ name: c.toolName, input: c.input })),
             toolResults: r.toolResults.map((t) => t.output), finishReason: r.finishReason };
  });

  await scenario("ai_cache", async () => {
    const messages = [
      { role: "system", content: freshDocument(),
        providerOptions: { anthropic: { cacheControl: { type: "ephemeral" } } } },
      { role: "user", content: "Which license is this?" }];
    const usages = [];
    for (let i = 0; i < 2; i++) {
      usages.push((await generateText({ ...common, messages, maxOutputTokens: 4 })).usage);
    }
    return usages;
  });

  console.log(JSON.stringify(RESULTS));
})().catch((error) => { console.error(error); process.exit(1); });
'''


@pytest.fixture(scope="module")
def node_modules() -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    pins = [f"{name}@{version}" for name, version in PACKAGES.items()]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    tag = hashlib.sha256(" ".join(pins).encode()).hexdigest()[:12]
    prefix = cache / "preheat-tests" / f"js-clients-{tag}"
    modules = prefix / "node_modules"
    if not all((modules / name / "package.json").exists() for name in PACKAGES):
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--save-exact",
                        "--prefix", str(prefix), *pins],
                       check=True, capture_output=True, timeout=600)
    return modules


@pytest.fixture(scope="module")
def js_server(server_logs):
    srv = start_server(server_logs, "clients-js", CLIENTS_SERVER_ARGS)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def js(node_modules, js_server, tmp_path_factory) -> dict:
    script = tmp_path_factory.mktemp("js-clients") / "clients.js"
    script.write_text(SCRIPT)
    settings = {"base_url": js_server.base_url, "key": KEY, "model": MODEL, "document": document()}
    done = subprocess.run(["node", str(script)], input=json.dumps(settings), capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "NODE_PATH": str(node_modules)})
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    results["versions"] = {
        name: json.loads((node_modules / name / "package.json").read_text())["version"]
        for name in PACKAGES}
    return results


def ok(results: dict, name: str):
    """One scenario's result; its error (with the client's stack and the body) fails the test."""
    result = results[name]
    if isinstance(result, dict) and "error" in result:
        pytest.fail(f"{name}: {result['error']}\nresponse body: {result['responseBody']}\n"
                    f"{result['traceback']}")
    return result


def check_cache_read(written: int, read: int) -> None:
    assert written > 0, "the first call wrote nothing to the cache"
    assert read == written, f"the second call read {read} cached tokens, the first wrote {written}"


def test_versions(js):
    assert js["versions"] == PACKAGES


# --- the TypeScript SDK ------------------------------------------------------------------------

def check_message(message: dict, max_tokens: int) -> None:
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0]["type"] == "text" and message["content"][0]["text"].strip()
    assert message["stop_reason"] in ("end_turn", "max_tokens")
    assert message["usage"]["input_tokens"] > 0
    assert 0 < message["usage"]["output_tokens"] <= max_tokens


def test_sdk_stream_on_text_then_final_message(js):
    result = ok(js, "sdk_stream")
    check_message(result["message"], 16)
    assert len(result["parts"]) > 1
    assert "".join(result["parts"]) == result["message"]["content"][0]["text"]


def test_sdk_messages_create(js):
    check_message(ok(js, "sdk_create"), 16)


def test_sdk_streamed_tool_call(js):
    result = ok(js, "sdk_stream_tool")
    message = result["message"]
    assert message["stop_reason"] == "tool_use"
    [block] = message["content"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather"
    assert isinstance(block["input"]["city"], str)
    # the input streamed as input_json_delta parts: together they are the final input
    assert len(result["jsonParts"]) > 1
    assert json.loads("".join(result["jsonParts"])) == block["input"] == result["snapshots"][-1]


def test_sdk_messages_parse_with_zod_output_format(js):
    result = ok(js, "sdk_parse")
    assert result["valid"], result["parsed"]
    assert result["stop_reason"] == "end_turn"


def test_sdk_cache_read(js):
    first, second = ok(js, "sdk_cache")
    check_cache_read(first["cache_creation_input_tokens"], second["cache_read_input_tokens"])
    assert second["cache_creation_input_tokens"] == 0


# --- the Vercel AI SDK -------------------------------------------------------------------------

def check_usage(usage: dict, max_tokens: int) -> None:
    assert usage["inputTokens"] > 0 and 0 < usage["outputTokens"] <= max_tokens
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]


def test_ai_generate_text(js):
    result = ok(js, "ai_generate_text")
    assert result["text"].strip()
    assert result["finishReason"] in ("stop", "length")
    check_usage(result["usage"], 16)


def test_ai_stream_text(js):
    result = ok(js, "ai_stream_text")
    assert result["streamError"] is None
    assert len(result["parts"]) > 1
    assert "".join(result["parts"]) == result["text"] != ""
    assert result["finishReason"] in ("stop", "length")
    check_usage(result["usage"], 16)


@pytest.mark.parametrize("mode", ["outputFormat", "jsonTool"])
def test_ai_generate_object(js, mode):
    result = ok(js, f"ai_generate_object_{mode}")
    assert result["valid"], result["object"]
    check_usage(result["usage"], 80)


def test_ai_stream_object(js):
    result = ok(js, "ai_stream_object")
    assert result["valid"], result["object"]
    assert result["partials"] > 1
    check_usage(result["usage"], 80)


def test_ai_tool_call(js):
    result = ok(js, "ai_tool_call")
    [call] = result["toolCalls"]
    assert call["name"] == "get_weather" and isinstance(call["input"]["city"], str)
    assert result["calls"] == [call["input"]["city"]] and result["toolResults"] == ["sunny"]
    assert result["finishReason"] == "tool-calls"


def test_ai_cache_read(js):
    first, second = ok(js, "ai_cache")
    check_cache_read(first["inputTokenDetails"]["cacheWriteTokens"],
                     second["inputTokenDetails"]["cacheReadTokens"])
    assert first["inputTokens"] == second["inputTokens"]  # all the prompt's tokens, cached or not
