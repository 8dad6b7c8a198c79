"""Wire shapes of OpenAI's Chat Completions API: pydantic request models and response models.

Requests are validated strictly, as OpenAI does: an unknown field is a 400. Fields OpenAI
defines that this server cannot honour are declared, so that their default value is
accepted and any other is a 400 saying why, instead of "extra inputs are not permitted".
Unions are told apart by a tag (``role=user``, ``type=text``) that never shows up in the
``param`` of an error.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      ValidationInfo, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from preheat.server.lone_surrogates import lone_surrogate_message, lone_surrogate_path
from preheat.server.openai_errors import ParamError
from preheat.server.protocol import describe_validation_error, refuse_kind

Request = TypeVar("Request", bound=BaseModel)

FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_STOP_SEQUENCES = 4

# ---- requests -----------------------------------------------------------------


class Strict(BaseModel):
    """A request model: unknown fields are 400s, values are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


def tagged_by(key: str, known: dict[str, str]) -> Discriminator:
    """Tell a union's members apart by ``value[key]``; unknown values go to ``other``."""
    def tag(value: Any) -> str:
        kind = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        # a list or object where a name belongs is no name: unhashable, so not a lookup key
        return f"{key}={known.get(kind, 'other') if isinstance(kind, str) else 'other'}"
    return Discriminator(tag)


def as_parts(value: Any) -> Any:
    """OpenAI's string content is one text part; null (an assistant's) is none."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    return [] if value is None else value


class CacheBreakpoint(Strict):
    """``prompt_cache_breakpoint`` on a text part: the cached prefix ends with that part."""

    mode: Literal["explicit"]
    ttl: Literal["30m", "12h"] | None = None  # None: the request's TTL

    @field_validator("ttl")
    @classmethod
    def _kept_here(cls, value: str | None) -> str | None:
        if value == "12h":
            raise PydanticCustomError(
                "unsupported_value", "'12h' is longer than this server keeps a cached prefix; "
                "'30m' (served by its 1h TTL) is the longest")
        return value


class TextPart(Strict):
    type: Literal["text"]
    text: str
    prompt_cache_breakpoint: CacheBreakpoint | None = None


class RefusalPart(Strict):
    type: Literal["refusal"]
    refusal: str


class ImageUrl(Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Strict):
    """An image: the Messages API's image block, so ``--images`` decides (a 400 or a note)."""

    type: Literal["image_url"]
    image_url: ImageUrl


class UnsupportedPart(BaseModel):
    """Any part a text model can't read (input_audio, file, ...)."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _reject(cls, data: Any) -> Any:
        refuse_kind(data, "unsupported_content", "content parts of type '{kind}' are not "
                    "supported: this server's model reads text only")


TextOnly = Annotated[
    Annotated[TextPart, Tag("type=text")] | Annotated[UnsupportedPart, Tag("type=other")],
    tagged_by("type", {"text": "text"})]
UserPart = Annotated[
    Annotated[TextPart, Tag("type=text")] | Annotated[ImagePart, Tag("type=image_url")]
    | Annotated[UnsupportedPart, Tag("type=other")],
    tagged_by("type", {"text": "text", "image_url": "image_url"})]
AssistantPart = Annotated[
    Annotated[TextPart, Tag("type=text")] | Annotated[RefusalPart, Tag("type=refusal")]
    | Annotated[UnsupportedPart, Tag("type=other")],
    tagged_by("type", {"text": "text", "refusal": "refusal"})]


class SystemMessage(Strict):
    role: Literal["system", "developer"]
    content: list[TextOnly]
    name: str | None = None  # accepted; the chat template has no place for it

    parts = field_validator("content", mode="before")(as_parts)


class UserMessage(Strict):
    role: Literal["user"]
    content: list[UserPart]
    name: str | None = None  # accepted; the chat template has no place for it

    parts = field_validator("content", mode="before")(as_parts)


class FunctionCall(Strict):
    name: str
    arguments: str  # a JSON object, as text


class ToolCall(Strict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(Strict):
    role: Literal["assistant"]
    content: list[AssistantPart] = []
    refusal: str | None = None  # an earlier refusal: shown to the model as what it said
    tool_calls: list[ToolCall] | None = None
    name: str | None = None  # accepted; the chat template has no place for it
    annotations: list[dict[str, Any]] | None = None  # round-tripped from responses; ignored
    audio: None = None
    function_call: None = None  # deprecated by OpenAI: history holds tool_calls

    parts = field_validator("content", mode="before")(as_parts)


class ToolMessage(Strict):
    role: Literal["tool"]
    content: list[TextOnly]
    tool_call_id: str

    parts = field_validator("content", mode="before")(as_parts)


class UnsupportedMessage(BaseModel):
    """A role OpenAI deprecated (``function``) or never had."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _reject(cls, data: Any) -> Any:
        role = data.get("role") if isinstance(data, dict) else None
        raise PydanticCustomError(
            "invalid_value", "role '{role}' is not supported: use system, developer, user, "
            "assistant or tool", {"role": role})


ChatMessage = Annotated[
    Annotated[SystemMessage, Tag("role=system")] | Annotated[UserMessage, Tag("role=user")]
    | Annotated[AssistantMessage, Tag("role=assistant")]
    | Annotated[ToolMessage, Tag("role=tool")] | Annotated[UnsupportedMessage, Tag("role=other")],
    tagged_by("role", {"system": "system", "developer": "system", "user": "user",
                        "assistant": "assistant", "tool": "tool"})]


class FunctionDefinition(Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # None: no parameters
    strict: bool | None = None  # every call is held to its schema, strict or not


class FunctionTool(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(Strict):
    name: str


class ToolChoice(Strict):
    """``"none"``, ``"auto"``, ``"required"`` (as ``{"type": ...}``) or a named function."""

    type: Literal["none", "auto", "required", "function"]
    function: FunctionName | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"type": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _name_for_function(self) -> ToolChoice:
        if (self.type == "function") != (self.function is not None):
            raise PydanticCustomError(
                "invalid_value", "function is required for type 'function', and only there")
        return self


class JSONSchemaFormat(Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")  # None: any JSON
    strict: bool | None = None  # the reply is held to the schema, strict or not


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_for_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise PydanticCustomError(
                "invalid_value", "json_schema is required for type 'json_schema', and only there")
        return self


class StreamOptions(Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # accepted; chunks are never padded


class PromptCacheOptions(Strict):
    """``implicit`` (default): one breakpoint at the end of the prompt, besides explicit ones."""

    mode: Literal["implicit", "explicit"] = "implicit"
    ttl: Literal["30m"] | None = None


# Fields OpenAI defines that only work here at their default: the values accepted, and why
# any other is refused.
_DEFAULT_ONLY: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((None, 1), "only 1 choice per request is supported"),
    "frequency_penalty": ((None, 0), "repetition penalties are not supported"),
    "presence_penalty": ((None, 0), "repetition penalties are not supported"),
    "logit_bias": ((None, {}), "logit_bias is not supported"),
    "logprobs": ((None, False), "log probabilities are not returned by this server"),
    "top_logprobs": ((None, 0), "log probabilities are not returned by this server"),
    "modalities": ((None, ["text"]), "this server's model reads and writes text only"),
    "audio": ((None,), "this server's model reads and writes text only"),
    "prediction": ((None,), "predicted outputs are not supported"),
    "functions": ((None, []), "functions are deprecated by OpenAI: use tools"),
    "function_call": ((None,), "function_call is deprecated by OpenAI: use tool_choice"),
    "web_search_options": ((None,), "there is no web search here"),
    "moderation": ((None,), "there is no moderation model here"),
}


def stop_list(value: Any) -> Any:
    """``stop`` as a list: OpenAI takes one string or several."""
    return [value] if isinstance(value, str) else value


def non_empty_stops(value: list[str] | None) -> list[str] | None:
    if value and any(not s for s in value):
        raise PydanticCustomError("invalid_value", "stop sequences must be non-empty strings")
    return value


def only_when_streaming(value: Any, info: ValidationInfo) -> Any:
    """``stream_options``, which only a streamed request may send."""
    if value is not None and not info.data.get("stream"):
        raise PydanticCustomError(
            "invalid_value", "stream_options is only allowed when stream is true")
    return value


def default_only(table: dict[str, tuple[tuple[Any, ...], str]], value: Any,
                 info: ValidationInfo) -> Any:
    """``value`` if ``table`` accepts it for the field; else the 400 saying why not."""
    accepted, why = table[info.field_name]
    if value not in accepted:
        raise PydanticCustomError("unsupported_parameter", "{why}", {"why": why})
    return value


class ChatCompletionRequest(Strict):
    """Body of ``POST /v1/chat/completions``."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)  # OpenAI's older name for the above
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stop: list[str] | None = Field(default=None, max_length=MAX_STOP_SEQUENCES)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    prompt_cache_options: PromptCacheOptions | None = None
    # accepted; nothing here acts on them (the cache is per API key, there is one tier)
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    # see _DEFAULT_ONLY
    n: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None

    stop_as_list = field_validator("stop", mode="before")(stop_list)
    stops_non_empty = field_validator("stop")(non_empty_stops)

    only_streaming = field_validator("stream_options")(only_when_streaming)

    @field_validator(*_DEFAULT_ONLY)
    @classmethod
    def _default_only(cls, value: Any, info: ValidationInfo) -> Any:
        return default_only(_DEFAULT_ONLY, value, info)

    @property
    def max_output_tokens(self) -> int | None:
        """The output limit asked for, by either name (the newer one first)."""
        return self.max_completion_tokens or self.max_tokens


# pydantic error types -> OpenAI's error codes
_ERROR_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter",
                "unsupported_parameter": "unsupported_parameter",
                "unsupported_value": "unsupported_value", "unsupported_content": "invalid_value",
                "literal_error": "invalid_value", "invalid_value": "invalid_value"}


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    """Validate a Chat Completions body; any problem is a 400 naming the field (``param``)."""
    return parse_openai_request(ChatCompletionRequest, raw)


def parse_openai_request(model: type[Request], raw: bytes) -> Request:
    """Validate a JSON body as ``model``; any problem is a 400 naming the field (``param``)
    with OpenAI's error code."""
    if (path := lone_surrogate_path(raw)) is not None:
        raise ParamError(lone_surrogate_message(path), path, "invalid_value")
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise ParamError(describe_validation_error(err)) from None
        param = ".".join(str(p) for p in first["loc"] if "=" not in str(p)) or None
        problem = "Field required" if first["type"] == "missing" else first["msg"]
        raise ParamError(f"{param or 'body'}: {problem}", param,
                         _ERROR_CODES.get(first["type"])) from None


# ---- responses ------------------------------------------------------------------


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ResponseToolCall] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length", "tool_calls"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # read from the cache
    cache_write_tokens: int  # written to it by this request


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails = CompletionTokensDetails()


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage

