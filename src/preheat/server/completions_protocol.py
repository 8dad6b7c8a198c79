"""Wire shapes of OpenAI's legacy Completions API (``POST /v1/completions``): the request,
validated as strictly as Chat Completions' (an unknown field is a 400), and the response.

One prompt per request: a string or a list of token ids (a list holding one of either is
the same). Fields OpenAI defines that this server can't honour are accepted at their
default only, and any other value is a 400 saying why.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from preheat.server.openai_protocol import (MAX_STOP_SEQUENCES, CompletionUsage, StreamOptions,
                                            Strict, default_only, non_empty_stops,
                                            only_when_streaming, parse_openai_request, stop_list)

DEFAULT_MAX_TOKENS = 16  # OpenAI's, for this API
MAX_LOGPROBS = 20

# Fields OpenAI defines that only work here at their default: the values accepted, and why
# any other is refused.
_DEFAULT_ONLY: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((None, 1), "only 1 choice per request is supported"),
    "best_of": ((None, 1), "best_of is not supported: only 1 completion is generated"),
    "echo": ((None, False), "echo is not supported: the response holds the completion only, "
             "not the prompt"),
    "suffix": ((None,), "suffix is not supported: the model completes the prompt only at "
               "its end"),
    "frequency_penalty": ((None, 0), "repetition penalties are not supported"),
    "presence_penalty": ((None, 0), "repetition penalties are not supported"),
    "logit_bias": ((None, {}), "logit_bias is not supported"),
}


def one_prompt(value: Any) -> Any:
    """A prompt as a string or a list of token ids: a list holding one string or one list
    of ids is that prompt; several are a 400 (send one request per prompt)."""
    if isinstance(value, list) and value and all(isinstance(v, (str, list)) for v in value):
        if len(value) > 1:
            raise PydanticCustomError(
                "unsupported_value", "only one prompt per request is supported: send each "
                "of the {count} prompts in a request of its own", {"count": len(value)})
        value = value[0]
    token_ids = isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)
    if not (isinstance(value, str) or token_ids):
        raise PydanticCustomError("invalid_type", "the prompt must be a string or a list of "
                                  "token ids (integers)")
    if not value:
        raise PydanticCustomError("invalid_value", "the prompt must not be empty")
    if token_ids and min(value) < 0:
        raise PydanticCustomError("invalid_value", "token ids must not be negative")
    return value


class CompletionRequest(Strict):
    """Body of ``POST /v1/completions``."""

    model: str
    prompt: str | list[int]
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stop: list[str] | None = Field(default=None, max_length=MAX_STOP_SEQUENCES)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    user: str | None = None  # accepted; nothing here acts on it
    # see _DEFAULT_ONLY
    n: int | None = None
    best_of: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    single_prompt = field_validator("prompt", mode="before")(one_prompt)

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any) -> Any:
        return DEFAULT_MAX_TOKENS if value is None else value

    stop_as_list = field_validator("stop", mode="before")(stop_list)
    stops_non_empty = field_validator("stop")(non_empty_stops)

    @field_validator("logprobs", mode="before")
    @classmethod
    def _at_most_twenty(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_LOGPROBS:
            raise PydanticCustomError(
                "invalid_value", "logprobs may be at most {most}: that many of the most "
                "likely tokens are reported beside each generated one", {"most": MAX_LOGPROBS})
        return value

    only_streaming = field_validator("stream_options")(only_when_streaming)

    @field_validator(*_DEFAULT_ONLY)
    @classmethod
    def _default_only(cls, value: Any, info: ValidationInfo) -> Any:
        return default_only(_DEFAULT_ONLY, value, info)


def parse_completion_request(raw: bytes) -> CompletionRequest:
    """Validate a Completions body; any problem is a 400 naming the field (``param``)."""
    return parse_openai_request(CompletionRequest, raw)


# ---- responses ------------------------------------------------------------------


class Logprobs(BaseModel):
    """OpenAI's legacy logprobs: per generated token its text, logprob, the most likely
    tokens there (``{text: logprob}``) and where its text starts."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: Logprobs | None = None
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage
