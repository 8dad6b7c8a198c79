"""OpenAI's legacy completions (``client.completions``) through the official ``openai`` SDK
against the embedded model on the shared server: a raw prompt (text or token ids) continued
without a chat template, streamed or not, with logprobs, stop strings, the prompt cache and
400s that leave the server serving.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest
from e2e_helpers import ALIAS, KEY_A, MIN_CACHE_TOKENS, document

from preheat.loader.embedded import embedded_model_path
from preheat.tokenizer.tokenizer import Tokenizer

PROMPT = "The three primary colours are red, yellow and"
GREEDY = {"temperature": 0}


@pytest.fixture
def oai(server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY_A, max_retries=0,
                       timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(embedded_model_path())


def complete(oai: openai.OpenAI, prompt=PROMPT, **fields):
    return oai.completions.create(model=ALIAS, prompt=prompt, **{"max_tokens": 12, **GREEDY,
                                                                 **fields})


def test_a_text_prompt_and_its_token_ids_give_the_same_greedy_completion(oai, tokenizer):
    text = complete(oai)
    assert text.object == "text_completion" and text.id.startswith("cmpl-")
    assert text.model == ALIAS
    [choice] = text.choices
    assert choice.index == 0 and choice.text and choice.logprobs is None
    assert choice.finish_reason in ("stop", "length")
    usage = text.usage
    assert usage.prompt_tokens == len(tokenizer.encode_prompt(PROMPT)[0])  # no chat template
    assert 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    ids = complete(oai, prompt=tokenizer.encode_prompt(PROMPT)[0])
    assert ids.choices[0].text == choice.text
    assert ids.usage.prompt_tokens == usage.prompt_tokens


def test_streamed_chunks_add_up_to_the_whole_completion(oai):
    whole = complete(oai, max_tokens=16)
    chunks = list(complete(oai, max_tokens=16, stream=True,
                           stream_options={"include_usage": True}))
    *pieces, last = chunks
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.object for c in chunks} == {"text_completion"}
    assert "".join(c.choices[0].text for c in pieces) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in pieces][-1] == whole.choices[0].finish_reason
    assert all(c.usage is None for c in pieces)
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens


def test_logprobs_of_each_token_with_five_alternatives(oai):
    whole = complete(oai, max_tokens=10, logprobs=5)
    logprobs = whole.choices[0].logprobs
    n = whole.usage.completion_tokens
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == n
    assert len(logprobs.top_logprobs) == len(logprobs.text_offset) == n
    assert "".join(logprobs.tokens).startswith(whole.choices[0].text)
    offsets = [0]
    for token in logprobs.tokens[:-1]:
        offsets.append(offsets[-1] + len(token))
    assert logprobs.text_offset == offsets
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs,
                                   logprobs.top_logprobs, strict=True):
        assert 1 <= len(top) <= 6 and token in top
        values = list(top.values())
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-4
        assert logprob == top[token] == max(values)  # greedy: the likeliest token
    streamed = list(complete(oai, max_tokens=10, logprobs=5, stream=True))
    assert [t for c in streamed for t in c.choices[0].logprobs.tokens] == logprobs.tokens
    assert [v for c in streamed for v in c.choices[0].logprobs.token_logprobs] == pytest.approx(
        logprobs.token_logprobs, abs=1e-4)
    assert [o for c in streamed for o in c.choices[0].logprobs.text_offset] == offsets


def test_a_sampled_token_is_reported_among_its_alternatives(oai):
    sampled = complete(oai, max_tokens=10, logprobs=2, temperature=1.5, seed=7)
    logprobs = sampled.choices[0].logprobs
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs,
                                   logprobs.top_logprobs, strict=True):
        assert top[token] == logprob and len(top) <= 3  # the two best, and the one drawn


def test_a_stop_string_ends_the_completion_before_it(oai):
    free = complete(oai, max_tokens=24).choices[0].text
    words = free.split()
    assert len(words) >= 3, free
    stop = " " + words[2]
    at = free.index(stop)
    stopped = complete(oai, max_tokens=24, stop=[stop, "\u2603"]).choices[0]
    assert stopped.text == free[:at] and stopped.finish_reason == "stop"


def test_max_tokens_ends_with_length(oai):
    completion = complete(oai, prompt="Once upon a time", max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_a_repeated_long_prompt_is_read_from_the_cache(oai):
    prompt = document(300) + "\n\nIn short,"
    first = complete(oai, prompt=prompt, max_tokens=4)
    second = complete(oai, prompt=prompt, max_tokens=4)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens > MIN_CACHE_TOKENS
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens >= MIN_CACHE_TOKENS
    assert second.choices[0].text == first.choices[0].text


@pytest.mark.parametrize("fields, param", [
    ({"logprobs": 21}, "logprobs"),
    ({"echo": True}, "echo"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"n": 2}, "n"),
])
def test_bad_requests_are_400s_and_the_server_serves_on(oai, fields, param):
    with pytest.raises(openai.BadRequestError) as info:
        complete(oai, **fields)
    assert info.value.status_code == 400 and info.value.param == param
    assert info.value.type == "invalid_request_error" and info.value.message
    assert complete(oai, max_tokens=2).choices[0].finish_reason in ("stop", "length")


def test_an_unknown_model_is_a_404(oai):
    with pytest.raises(openai.NotFoundError) as info:
        oai.completions.create(model="davinci-002", prompt=PROMPT, max_tokens=2)
    assert info.value.code == "model_not_found"
