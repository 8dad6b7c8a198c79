"""OpenAI's legacy completions (``POST /v1/completions``): the raw prompt, the response and
its chunks, logprobs in OpenAI's legacy shape, errors.

The engine is replaced by scripted event streams: what the real engine does with the
request is covered end to end in tests/e2e/test_openai_completions.py.
"""
from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from preheat.engine.errors import EngineError
from preheat.engine.output import (CacheUsage, Finished, Started, StopReason, TextDelta,
                                   TokenLogprob)
from preheat.loader.embedded import embedded_model_path
from preheat.server.app import create_app
from preheat.server.settings import ServerSettings
from preheat.tokenizer.tokenizer import Tokenizer
from scripted_stream import ScriptedStream

KEY = "test-key"
CONTEXT_WINDOW = 2048
USAGE = CacheUsage(prompt_tokens=300, cache_read_tokens=256, cache_write_tokens=32)
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(embedded_model_path())


class ScriptedEngine:
    """Answers every request with the same events."""

    model_id = "smol"
    context_window = CONTEXT_WINDOW
    restarting, restarts = False, 0

    def __init__(self, tokenizer: Tokenizer, *events):
        self.tokenizer = tokenizer
        self.events = events
        self.submitted = []

    async def submit(self, request):
        self.submitted.append(request)
        return ScriptedStream(*self.events)


def hello(tokenizer: Tokenizer, reason: StopReason = StopReason.MAX_TOKENS,
          logprobs: bool = False) -> tuple:
    """A reply " Paris." in two deltas, then a held-back last token reported at the end."""
    ids = [tokenizer.encode(t)[0] for t in (" Paris", ".", "\n")]
    entries = [TokenLogprob(i, -0.5 * (n + 1), ((i, -0.5 * (n + 1)), (7, -3.0)))
               if logprobs else None for n, i in enumerate(ids)]
    lp = (lambda *k: tuple(entries[j] for j in k)) if logprobs else (lambda *k: ())
    return (Started(USAGE), TextDelta(" Paris", 1, lp(0)), TextDelta(".", 2, lp(1)),
            Finished(reason, None, USAGE, 3, ids, " Paris.", logprobs=lp(2)))


def client_for(engine: ScriptedEngine) -> TestClient:
    app = create_app(engine, ServerSettings(api_keys=(KEY,), aliases=("gpt-3.5-turbo-instruct",),
                                            min_cache_tokens=0))
    return TestClient(app, headers={"authorization": f"Bearer {KEY}"})


def post(engine: ScriptedEngine, **body):
    with client_for(engine) as client:
        return client.post("/v1/completions", json={
            "model": "gpt-3.5-turbo-instruct", "prompt": PROMPT, **body})


def chunks_of(response) -> list:
    frames = [f for f in response.text.split("\n\n") if f and not f.startswith(":")]
    assert all(f.startswith("data: ") for f in frames)
    return [f[6:] if f == "data: [DONE]" else json.loads(f[6:]) for f in frames]


# ---- the request --------------------------------------------------------------------


def test_the_prompt_is_tokenized_as_is_and_cached_at_its_end(tokenizer):
    engine = ScriptedEngine(tokenizer, *hello(tokenizer))
    assert post(engine).status_code == 200
    [request] = engine.submitted
    assert request.prompt_ids == tokenizer.encode_prompt(PROMPT)[0]  # no chat template
    assert [b.position for b in request.breakpoints] == [len(request.prompt_ids)]
    params = request.params
    assert (params.max_tokens, params.stop, params.logprobs, params.grammar) == (16, (), None, None)


@pytest.mark.parametrize("prompt", [[[1, 2, 3]], [1, 2, 3]])
def test_token_ids_are_the_prompt(tokenizer, prompt):
    engine = ScriptedEngine(tokenizer, *hello(tokenizer))
    assert post(engine, prompt=prompt).status_code == 200
    assert engine.submitted[0].prompt_ids == [1, 2, 3]


def test_a_list_of_one_string_is_that_string(tokenizer):
    engine = ScriptedEngine(tokenizer, *hello(tokenizer))
    assert post(engine, prompt=[PROMPT]).status_code == 200
    assert engine.submitted[0].prompt_ids == tokenizer.encode_prompt(PROMPT)[0]


def test_sampling_fields(tokenizer):
    engine = ScriptedEngine(tokenizer, *hello(tokenizer))
    post(engine, max_tokens=40, temperature=1.5, top_p=0.5, seed=3, stop="\n", logprobs=4,
         user="u", n=1, echo=False, suffix=None, best_of=1)
    params = engine.submitted[0].params
    assert (params.max_tokens, params.temperature, params.top_p, params.seed, params.stop,
            params.logprobs) == (40, 1.5, 0.5, 3, ("\n",), 4)


# ---- the response -------------------------------------------------------------------


def test_a_completion(tokenizer):
    engine = ScriptedEngine(tokenizer, *hello(tokenizer))
    response = post(engine)
    body = response.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == "gpt-3.5-turbo-instruct"
    assert body["choices"] == [{"text": " Paris.", "index": 0, "logprobs": None,
                                "finish_reason": "length"}]
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        300, 3, 303)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 256
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("reason, finish", [(StopReason.EOS, "stop"),
                                            (StopReason.STOP_SEQUENCE, "stop"),
                                            (StopReason.MAX_TOKENS, "length"),
                                            (StopReason.CONTEXT_WINDOW, "length")])
def test_finish_reasons(tokenizer, reason, finish):
    engine = ScriptedEngine(tokenizer, *hello(tokenizer, reason))
    assert post(engine).json()["choices"][0]["finish_reason"] == finish


def test_logprobs_in_the_legacy_shape(tokenizer):
    engine = ScriptedEngine(tokenizer, *hello(tokenizer, logprobs=True))
    logprobs = post(engine, logprobs=1).json()["choices"][0]["logprobs"]
    seven = tokenizer.decode([7], skip_special_tokens=False)
    assert logprobs == {
        "tokens": [" Paris", ".", "\n"],
        "token_logprobs": [-0.5, -1.0, -1.5],
        "top_logprobs": [{" Paris": -0.5, seven: -3.0}, {".": -1.0, seven: -3.0},
                         {"\n": -1.5, seven: -3.0}],
        "text_offset": [0, 6, 7]}


def test_the_chunks_carry_text_and_logprobs_then_the_finish_then_usage(tokenizer):
    engine = ScriptedEngine(tokenizer, *hello(tokenizer, logprobs=True))
    response = post(engine, stream=True, logprobs=0, stream_options={"include_usage": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    *chunks, done = chunks_of(response)
    assert done == "[DONE]"
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len({c["id"] for c in chunks}) == 1
    *pieces, usage = chunks
    choices = [c["choices"][0] for c in pieces]
    assert [c["text"] for c in choices] == [" Paris", ".", ""]
    assert [c["finish_reason"] for c in choices] == [None, None, "length"]
    assert [c["logprobs"]["tokens"] for c in choices] == [[" Paris"], ["."], ["\n"]]
    assert [c["logprobs"]["text_offset"] for c in choices] == [[0], [6], [7]]
    assert choices[2]["logprobs"]["token_logprobs"] == [-1.5]
    assert all(c["usage"] is None for c in pieces)
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 303


def test_chunks_without_logprobs_or_usage(tokenizer):
    engine = ScriptedEngine(tokenizer, *hello(tokenizer))
    *chunks, done = chunks_of(post(engine, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == " Paris."
    assert all(c["choices"][0]["logprobs"] is None and "usage" not in c for c in chunks)


def test_a_failure_mid_stream_is_an_error_chunk(tokenizer):
    engine = ScriptedEngine(tokenizer, Started(USAGE), TextDelta("Hel", 1),
                            EngineError("internal error in the engine"))
    chunks = chunks_of(post(engine, stream=True))
    assert chunks[-1] == {"error": {"message": "internal error in the engine",
                                    "type": "server_error", "param": None, "code": None}}


# ---- errors -------------------------------------------------------------------------


@pytest.mark.parametrize("body, param, code", [
    ({"logprobs": 21}, "logprobs", "invalid_value"),
    ({"logprobs": -1}, "logprobs", None),
    ({"echo": True}, "echo", "unsupported_parameter"),
    ({"n": 2}, "n", "unsupported_parameter"),
    ({"best_of": 3}, "best_of", "unsupported_parameter"),
    ({"suffix": "end"}, "suffix", "unsupported_parameter"),
    ({"prompt": ""}, "prompt", "invalid_value"),
    ({"prompt": []}, "prompt", "invalid_value"),
    ({"prompt": [[]]}, "prompt", "invalid_value"),
    ({"prompt": 5}, "prompt", None),
    ({"prompt": [1, "a"]}, "prompt", None),
    ({"prompt": [1, True]}, "prompt", None),
    ({"prompt": [-1]}, "prompt", "invalid_value"),
    ({"prompt": ["a", "b"]}, "prompt", "unsupported_value"),
    ({"prompt": [[1], [2]]}, "prompt", "unsupported_value"),
    ({"prompt": [10**9]}, "prompt", "invalid_value"),
    ({"max_tokens": 0}, "max_tokens", None),
    ({"max_tokens": CONTEXT_WINDOW + 1}, "max_tokens", "invalid_value"),
    ({"max_tokens": "8"}, "max_tokens", None),
    ({"temperature": 3}, "temperature", None),
    ({"stop": ""}, "stop", "invalid_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", None),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({"messages": []}, "messages", "unknown_parameter"),
    ({"prompt": "word " * 3000}, "prompt", "context_length_exceeded"),
])
def test_invalid_requests_are_400s_naming_the_param(tokenizer, body, param, code):
    engine = ScriptedEngine(tokenizer, *hello(tokenizer))
    response = post(engine, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert error["message"] and not engine.submitted


def test_missing_fields_and_an_unknown_model(tokenizer):
    engine = ScriptedEngine(tokenizer, *hello(tokenizer))
    with client_for(engine) as client:
        missing = client.post("/v1/completions", json={"model": "gpt-3.5-turbo-instruct"})
        unknown = client.post("/v1/completions", json={"model": "davinci", "prompt": "x"})
        no_key = client.post("/v1/completions", headers={"authorization": ""},
                             json={"model": "gpt-3.5-turbo-instruct", "prompt": "x"})
    assert missing.status_code == 400
    assert (missing.json()["error"]["param"], missing.json()["error"]["code"]) == (
        "prompt", "missing_required_parameter")
    assert unknown.status_code == 404
    assert (unknown.json()["error"]["param"], unknown.json()["error"]["code"]) == (
        "model", "model_not_found")
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
