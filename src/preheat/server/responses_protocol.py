"""Wire shapes of OpenAI's Responses API (``/v1/responses``): the request, its input
items, and the response object with its output items.

As on Chat Completions, requests are validated strictly (an unknown field is a 400), and
fields this server cannot honour are declared so that their default is accepted and any
other value is a 400 saying why. Input items and content parts are told apart by their
``type`` tag, which never shows up in an error's ``param``.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, Tag, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from preheat.server.openai_protocol import (FUNCTION_NAME, CacheBreakpoint,
                                            CompletionTokensDetails, PromptCacheOptions,
                                            PromptTokensDetails, Strict, default_only,
                                            only_when_streaming, tagged_by)
from preheat.server.protocol import refuse_kind

MAX_METADATA_PAIRS = 16

# ---- input ------------------------------------------------------------------------


class InputText(Strict):
    type: Literal["input_text", "output_text"]  # an assistant's earlier text is output_text
    text: str
    annotations: list[dict[str, Any]] | None = None  # round-tripped from output; ignored
    logprobs: list[dict[str, Any]] | None = None  # round-tripped from output; ignored
    prompt_cache_breakpoint: CacheBreakpoint | None = None


class Refusal(Strict):
    type: Literal["refusal"]
    refusal: str


class InputImage(Strict):
    """An image: the Messages API's image block, so ``--images`` decides (a 400 or a note)."""

    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None
    prompt_cache_breakpoint: CacheBreakpoint | None = None

    @field_validator("file_id")
    @classmethod
    def _no_files(cls, value: str | None) -> str | None:
        if value is not None:
            raise PydanticCustomError("unsupported_value",
                                      "file_id: there is no Files API here; send image_url")
        return value


class InputFile(Strict):
    """A file as inline data (``file_data``, a data URL or base64): a PDF or text document."""

    type: Literal["input_file"]
    file_data: str | None = None
    filename: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    detail: str | None = None
    prompt_cache_breakpoint: CacheBreakpoint | None = None

    @model_validator(mode="after")
    def _inline_only(self) -> InputFile:
        if self.file_data is None:
            raise PydanticCustomError(
                "unsupported_value", "only inline file_data is read here (there is no Files "
                "API and nothing to fetch a file_url with)")
        return self


def _refused(message: str) -> type[BaseModel]:
    """A union's catch-all member: whatever lands in it is a 400 saying ``message`` (which
    may name the value's type as ``{kind}``)."""
    class Refused(BaseModel):
        model_config = ConfigDict(extra="allow")

        @model_validator(mode="before")
        @classmethod
        def _reject(cls, data: Any) -> Any:
            refuse_kind(data, "unsupported_content", message)
    return Refused


UnsupportedPart = _refused("content parts of type '{kind}' are not supported: use input_text, "
                           "input_image or input_file")


ContentPart = Annotated[
    Annotated[InputText, Tag("type=text")] | Annotated[Refusal, Tag("type=refusal")]
    | Annotated[InputImage, Tag("type=image")] | Annotated[InputFile, Tag("type=file")]
    | Annotated[UnsupportedPart, Tag("type=other")],
    tagged_by("type", {"input_text": "text", "output_text": "text", "refusal": "refusal",
                       "input_image": "image", "input_file": "file"})]
OutputPart = Annotated[
    Annotated[InputText, Tag("type=text")] | Annotated[InputImage, Tag("type=image")]
    | Annotated[InputFile, Tag("type=file")] | Annotated[UnsupportedPart, Tag("type=other")],
    tagged_by("type", {"input_text": "text", "input_image": "image", "input_file": "file"})]


def _as_text_parts(value: Any) -> Any:
    """String content is one text part."""
    return [{"type": "input_text", "text": value}] if isinstance(value, str) else value


class MessageItem(Strict):
    """A message: the user's, an earlier reply (the assistant's), or instructions
    (``system``/``developer``). ``type`` may be left out, as the SDK's easy form does."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: list[ContentPart]
    id: str | None = None
    status: str | None = None
    phase: str | None = None

    parts = field_validator("content", mode="before")(_as_text_parts)


class FunctionCallItem(Strict):
    """An earlier reply's function call."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str  # a JSON object, as text
    id: str | None = None
    status: str | None = None
    namespace: str | None = None


class FunctionCallOutputItem(Strict):
    """The result of a function call, sent back by the caller."""

    type: Literal["function_call_output"]
    call_id: str
    output: list[OutputPart]
    id: str | None = None
    status: str | None = None

    parts = field_validator("output", mode="before")(_as_text_parts)


class ReasoningItem(BaseModel):
    """An earlier reply's reasoning: accepted and left out (this server writes none)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["reasoning"]


UnsupportedItem = _refused("input items of type '{kind}' are not supported: use message, "
                           "function_call and function_call_output items")


InputItem = Annotated[
    Annotated[MessageItem, Tag("type=message")]
    | Annotated[FunctionCallItem, Tag("type=function_call")]
    | Annotated[FunctionCallOutputItem, Tag("type=function_call_output")]
    | Annotated[ReasoningItem, Tag("type=reasoning")]
    | Annotated[UnsupportedItem, Tag("type=other")],
    tagged_by("type", {"message": "message", "function_call": "function_call",
                       "function_call_output": "function_call_output",
                       "reasoning": "reasoning"})]


# ---- tools, format ------------------------------------------------------------------


class FunctionTool(Strict):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # None: no parameters
    # OpenAI's default is strict: the whole schema is enforced (a 400 where it can't be)
    strict: bool | None = True
    defer_loading: bool | None = None

    @field_validator("defer_loading")
    @classmethod
    def _loaded(cls, value: bool | None) -> bool | None:
        if value:
            raise PydanticCustomError("unsupported_value",
                                      "defer_loading: there is no tool search here")
        return value


UnsupportedTool = _refused("tools of type '{kind}' are not supported: this server runs "
                           "function tools only (there are no hosted tools)")


ToolParam = Annotated[
    Annotated[FunctionTool, Tag("type=function")] | Annotated[UnsupportedTool, Tag("type=other")],
    tagged_by("type", {"function": "function"})]


class NamedFunction(Strict):
    type: Literal["function"]
    name: str


class TextFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, pattern=FUNCTION_NAME)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None  # the reply is held to the schema, strict or not

    @model_validator(mode="after")
    def _schema_for_json_schema(self) -> TextFormat:
        if (self.type == "json_schema") != (self.schema_ is not None and self.name is not None):
            raise PydanticCustomError("invalid_value", "name and schema are required for "
                                      "type 'json_schema', and only there")
        return self


class TextConfig(Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # accepted; not acted on


class ReasoningConfig(Strict):
    """Accepted; the served model writes no reasoning items."""

    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class StreamOptions(Strict):
    include_obfuscation: bool | None = None  # accepted; events are never padded


# Fields OpenAI defines that only work here at their default: the values accepted, and why
# any other is refused.
_DEFAULT_ONLY: dict[str, tuple[tuple[Any, ...], str]] = {
    "background": ((None, False), "background responses are not supported: stream instead"),
    "conversation": ((None,), "the Conversations API is not served here: use "
                     "previous_response_id"),
    "prompt": ((None,), "prompt templates are not served here"),
    "truncation": ((None, "disabled"), "only 'disabled' is supported: a prompt that does not "
                   "fit is a 400"),
    "top_logprobs": ((None, 0), "log probabilities are not returned by this server"),
    "max_tool_calls": ((None,), "max_tool_calls is not supported"),
    "context_management": ((None, []), "server-side compaction is not supported"),
    "moderation": ((None,), "there is no moderation model here"),
}
# What ``include`` may ask for: the rest are outputs this server never makes.
_INCLUDABLE = {"reasoning.encrypted_content", "message.input_image.image_url"}


class ResponseCreateRequest(Strict):
    """Body of ``POST /v1/responses``."""

    model: str
    input: list[InputItem] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    tools: list[ToolParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    include: list[str] | None = None
    prompt_cache_options: PromptCacheOptions | None = None
    # accepted; nothing here acts on them (the cache is per API key, there is one tier)
    reasoning: ReasoningConfig | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    # see _DEFAULT_ONLY
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    truncation: str | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None
    context_management: list[dict[str, Any]] | None = None
    moderation: dict[str, Any] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _items(cls, value: Any) -> Any:
        """A string is one user message; an item with a role and no ``type`` is a message
        (the SDK's easy form)."""
        if isinstance(value, str):
            return [{"type": "message", "role": "user", "content": value}]
        if not isinstance(value, list):
            return value
        return [{**item, "type": "message"} if isinstance(item, dict) and "type" not in item
                and "role" in item else item for item in value]

    @field_validator("metadata")
    @classmethod
    def _few_pairs(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and len(value) > MAX_METADATA_PAIRS:
            raise PydanticCustomError("invalid_value", "at most 16 metadata pairs are allowed")
        return value

    @field_validator("include")
    @classmethod
    def _includable(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if name not in _INCLUDABLE:
                raise PydanticCustomError("unsupported_value", "'{name}' can't be included: "
                                          "this server does not produce it", {"name": name})
        return value

    only_streaming = field_validator("stream_options")(only_when_streaming)

    @field_validator(*_DEFAULT_ONLY)
    @classmethod
    def _default_only(cls, value: Any, info: ValidationInfo) -> Any:
        return default_only(_DEFAULT_ONLY, value, info)

    @property
    def stores(self) -> bool:
        """Whether the response is kept (OpenAI's default: yes)."""
        return self.store is not False


# ---- output -------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] = []


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = OutputMessage | FunctionCall


class ResponseUsage(BaseModel):
    """Chat Completions' usage under the Responses API's names; the details are the same."""

    input_tokens: int
    input_tokens_details: PromptTokensDetails
    output_tokens: int
    output_tokens_details: CompletionTokensDetails = CompletionTokensDetails()
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    """A response, as created, streamed, retrieved and stored."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: dict[str, Any]
    store: bool
    temperature: float | None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_p: float | None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None
    user: str | None
    metadata: dict[str, str]
    background: bool = False
    service_tier: str = "default"

    @property
    def output_text(self) -> str:
        """The text of the message items, as the SDK's ``output_text`` joins it."""
        return "".join(part.text for item in self.output if isinstance(item, OutputMessage)
                       for part in item.content)
