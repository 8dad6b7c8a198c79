"""Wire shapes of the Messages API: pydantic request models and response models.

Requests are validated strictly (unknown fields and wrong types are a 400, as
Anthropic does); fields that newer SDKs send but a small text model can't honour
are declared so the error can say why instead of just "extra input".
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, NoReturn

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from preheat.server.errors import InvalidRequestError
from preheat.server.lone_surrogates import lone_surrogate_message, lone_surrogate_path

# ---- requests -----------------------------------------------------------------


class Strict(BaseModel):
    """A request model: unknown fields are 400s, values are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class CacheControl(Strict):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] = "5m"


def refuse_kind(data: Any, code: str, message: str) -> NoReturn:
    """The 400 for a block (or content part) of a type this server does not take;
    ``message`` may name it as ``{kind}``."""
    kind = data.get("type") if isinstance(data, dict) else None
    raise PydanticCustomError(code, message, {"kind": kind})


def _as_blocks(value: Any) -> Any:
    """Anthropic treats string content as one text block; "" or null is no content."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}] if value else []
    return [] if value is None else value


class TextBlock(Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None  # round-tripped from responses; ignored


class UnsupportedBlock(BaseModel):
    """Any block type this server has no reading for (tool_reference, container uploads, ...)."""

    model_config = ConfigDict(extra="allow")
    type: str

    @model_validator(mode="before")
    @classmethod
    def _reject(cls, data: Any) -> Any:
        refuse_kind(data, "unsupported_block",
                    "content blocks of type '{kind}' are not supported: this server reads "
                    "text, tool_use, tool_result, document, search_result and thinking blocks "
                    "(and image blocks with --images placeholder)")


class CitationsConfig(Strict):
    enabled: bool | None = None  # accepted; no citations are generated


class FetchedSource(BaseModel):
    """A ``url`` or ``file`` source: refused, as there is nothing to fetch it with."""

    model_config = ConfigDict(extra="allow")
    type: Literal["url", "file"]

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        refuse_kind(data, "unsupported_source",
                    "document sources of type '{kind}' are not supported: this server fetches "
                    "nothing on a request's behalf and has no Files API; send the document "
                    "inline (base64, text or content)")


class Base64ImageSource(Strict):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class ImageUrlSource(Strict):
    type: Literal["url"]
    url: str


class ImageFileSource(Strict):
    type: Literal["file"]
    file_id: str


class ImageBlock(Strict):
    """An image. The served model reads text: ``documents.py`` refuses it or puts a
    placeholder in its place (``--images``), so its source is never fetched or decoded."""

    type: Literal["image"]
    source: Annotated[Base64ImageSource | ImageUrlSource | ImageFileSource,
                      Field(discriminator="type")]
    cache_control: CacheControl | None = None
    transformations: dict[str, Any] | None = None  # accepted; the image is never looked at


class PlainTextSource(Strict):
    type: Literal["text"]
    media_type: Literal["text/plain"]
    data: str


class Base64PdfSource(Strict):
    type: Literal["base64"]
    media_type: Literal["application/pdf"]
    data: str


class ContentSource(Strict):
    type: Literal["content"]
    content: list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]]

    content_as_blocks = field_validator("content", mode="before")(_as_blocks)


class DocumentBlock(Strict):
    """A document to read: plain text, content blocks or a PDF (``documents.py``)."""

    type: Literal["document"]
    source: Annotated[Base64PdfSource | PlainTextSource | ContentSource | FetchedSource,
                      Field(discriminator="type")]
    title: str | None = None
    context: str | None = None
    citations: CitationsConfig | None = None
    cache_control: CacheControl | None = None


class SearchResultBlock(Strict):
    """A search result a client's own search tool found (RAG): read as text."""

    type: Literal["search_result"]
    source: str
    title: str
    content: list[TextBlock]
    citations: CitationsConfig | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(Strict):
    """An earlier reply's reasoning, sent back. For a model without a reasoning format it is
    not part of the prompt; for one with it, its signature is checked (``model_input``)."""

    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(Strict):
    type: Literal["redacted_thinking"]
    data: str


_BLOCK_TYPES = ("text", "tool_use", "tool_result", "thinking", "redacted_thinking", "image",
                "document", "search_result")


def _block_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _BLOCK_TYPES else "unsupported"


def _none_as_empty(value: Any) -> Any:
    return [] if value is None else value


def _refused(why: str):
    """A validator for a field the API knows and this server does not serve."""
    def refuse(value: Any) -> Any:
        if value is None:
            return value
        raise PydanticCustomError("unsupported_field", why)
    return refuse


_RESULT_TYPES = ("text", "image", "document", "search_result")

ToolResultContent = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")]
    | Annotated[SearchResultBlock, Tag("search_result")]
    | Annotated[UnsupportedBlock, Tag("unsupported")],
    Discriminator(lambda v: kind if (kind := _block_tag(v)) in _RESULT_TYPES else "unsupported"),
]


class ToolUseBlock(Strict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    caller: dict[str, Any] | None = None  # round-tripped from responses; ignored
    toolset_name: str | None = None  # round-tripped; ignored


class ToolResultBlock(Strict):
    type: Literal["tool_result"]
    tool_use_id: str
    content: list[ToolResultContent] = []
    is_error: bool | None = None
    cache_control: CacheControl | None = None
    toolset_name: str | None = None  # round-tripped; ignored

    content_as_blocks = field_validator("content", mode="before")(_as_blocks)


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")]
    | Annotated[SearchResultBlock, Tag("search_result")]
    | Annotated[UnsupportedBlock, Tag("unsupported")],
    Discriminator(_block_tag),
]


class InputMessage(Strict):
    """A turn of the conversation. ``system`` messages (the current SDK's
    ``SystemMessageParam``) are instructions at their place in the conversation."""

    role: Literal["user", "assistant", "system"]
    content: list[ContentBlock]

    content_as_blocks = field_validator("content", mode="before")(_as_blocks)

    @model_validator(mode="after")
    def _system_is_text(self) -> InputMessage:
        if self.role == "system" and any(not isinstance(b, TextBlock) for b in self.content):
            raise PydanticCustomError(
                "system_content", "a system message holds text blocks only")
        if self.role != "assistant" and any(
                isinstance(b, (ThinkingBlock, RedactedThinkingBlock)) for b in self.content):
            raise PydanticCustomError(
                "thinking_content", "thinking blocks belong to assistant messages only")
        if self.role == "assistant" and any(
                isinstance(b, (ImageBlock, DocumentBlock, SearchResultBlock)) for b in self.content):
            raise PydanticCustomError(
                "user_content", "image, document and search_result blocks belong to user "
                "messages (and tool results) only")
        return self


class Tool(Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None
    type: Literal["custom"] | None = None
    # every call is held to input_schema by a grammar, strict or not
    strict: bool | None = None
    eager_input_streaming: bool | None = None  # arguments always stream as they are written
    input_examples: list[dict[str, Any]] | None = None  # shown to the model with the tool
    defer_loading: bool | None = None  # only false: tool search is a server tool
    allowed_callers: list[str] | None = None  # only "direct": there is no code execution

    @model_validator(mode="after")
    def _direct_only(self) -> Tool:
        if self.defer_loading:
            raise PydanticCustomError(
                "unsupported_tool", "defer_loading is not supported: this server has no tool "
                "search (tool_search_tool_regex_20251119, tool_search_tool_bm25_20251119); "
                "send the tools without defer_loading and every one is shown to the model")
        if any(c != "direct" for c in self.allowed_callers or ()):
            raise PydanticCustomError(
                "unsupported_tool", "allowed_callers: only 'direct' is supported (there is no "
                "code execution to call tools from)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _only_custom(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if isinstance(kind, str) and kind.startswith("tool_search_tool_"):
            raise PydanticCustomError(
                "unsupported_tool", "tool search ('{kind}') is not supported: send the tools "
                "without defer_loading and every one is shown to the model", {"kind": kind})
        if kind not in (None, "custom"):
            raise PydanticCustomError(
                "unsupported_tool",
                "server tools ('{kind}') are not supported: only custom tools with an input_schema",
                {"kind": kind})
        return data


class ToolChoice(Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _name_for_tool(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise PydanticCustomError("missing_name", "name is required when type is 'tool'")
        return self


class Thinking(Strict):
    """Extended thinking, as asked for: a model with a reasoning format thinks
    (``reasoning.py``); one without answers without thinking blocks, as Anthropic's
    models without thinking do."""

    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = Field(default=None, ge=1024)  # for "enabled", and required there
    display: Literal["summarized", "omitted"] | None = None

    @property
    def on(self) -> bool:
        return self.type != "disabled"

    @model_validator(mode="after")
    def _budget_for_enabled(self) -> Thinking:
        if (self.type == "enabled") != (self.budget_tokens is not None):
            raise PydanticCustomError(
                "thinking_budget", "budget_tokens is required for type 'enabled' and only there")
        return self


class OutputConfig(Strict):
    effort: str | None = None  # accepted; the model has one effort level
    # {"type": "json_schema", "schema": {...}}: checked (and enforced) by output_grammar
    format: dict[str, Any] | None = None


class TokensValue(Strict):
    type: Literal["input_tokens"]
    value: int = Field(ge=0)


class ToolUsesValue(Strict):
    type: Literal["tool_uses"]
    value: int = Field(ge=0)


class ThinkingTurnsValue(Strict):
    type: Literal["thinking_turns"]
    value: int = Field(ge=1)


class AllThinkingTurns(Strict):
    type: Literal["all"]


class ClearToolUsesEdit(Strict):
    type: Literal["clear_tool_uses_20250919"]
    trigger: Annotated[TokensValue | ToolUsesValue, Field(discriminator="type")] | None = None
    keep: ToolUsesValue | None = None
    clear_at_least: TokensValue | None = None
    exclude_tools: list[str] | None = None
    clear_tool_inputs: bool | list[str] | None = None


class ClearThinkingEdit(Strict):
    type: Literal["clear_thinking_20251015"]
    keep: Literal["all"] | Annotated[ThinkingTurnsValue | AllThinkingTurns,
                                     Field(discriminator="type")] | None = None


class CompactEdit(BaseModel):
    """Server-side compaction: this server does not summarize a conversation for its client."""

    model_config = ConfigDict(extra="allow")
    type: Literal["compact_20260112"]

    @model_validator(mode="after")
    def _refuse(self) -> CompactEdit:
        raise PydanticCustomError(
            "unsupported_edit", "compact_20260112 is not supported: this server does not "
            "compact conversations (clear_tool_uses_20250919 and clear_thinking_20251015 are)")


class ContextManagement(Strict):
    """``context_management``: edits applied to the conversation (``context_edits.py``)."""

    edits: list[Annotated[ClearToolUsesEdit | ClearThinkingEdit | CompactEdit,
                          Field(discriminator="type")]] = []


class Metadata(Strict):
    user_id: str | None = None


class DiagnosticsParam(Strict):
    previous_message_id: str | None = None


class ThreadParam(Strict):
    """``{"type": "create"}`` or ``{"type": "continue", "previous_message_id": ...}``."""

    type: Literal["create", "continue"]
    previous_message_id: str | None = None

    @model_validator(mode="after")
    def _id_for_continue(self) -> ThreadParam:
        if (self.type == "continue") != (self.previous_message_id is not None):
            raise PydanticCustomError(
                "thread_id", "previous_message_id is required for 'continue' and only there")
        return self


class PromptRequest(Strict):
    """The fields that make up a prompt: the body of ``count_tokens``."""

    model: str
    messages: list[InputMessage] = Field(min_length=1)
    system: list[TextBlock] = []
    tools: list[Tool] = []
    tool_choice: ToolChoice | None = None
    cache_control: CacheControl | None = None  # automatic caching: one breakpoint, last block
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    # The structured-outputs beta's spelling of output_config.format (LiteLLM sends it)
    output_format: dict[str, Any] | None = None
    context_management: ContextManagement | None = None
    speed: Literal["standard", "fast"] | None = None  # accepted; there is one speed
    # Billing and routing on Anthropic's side: accepted, and nothing to do here.
    user_profile_id: str | None = None
    workspace_id: str | None = None
    billing_policy: dict[str, Any] | None = None
    mcp_servers: Any = None  # refused, as compaction is: see the validators
    compaction: Any = None

    refuse_mcp_servers = field_validator("mcp_servers", mode="before")(_refused(
        "the MCP connector is not supported: connect MCP servers on the client side and "
        "pass their tools as custom tools"))
    refuse_compaction = field_validator("compaction", mode="before")(_refused(
        "compaction requests are not supported: this server does not summarize conversations"))
    system_as_blocks = field_validator("system", mode="before")(_as_blocks)
    null_tools = field_validator("tools", mode="before")(_none_as_empty)

    @model_validator(mode="after")
    def _one_output_format(self) -> PromptRequest:
        """``output_format`` is read as ``output_config.format``; both at once is a 400."""
        if self.output_format is None:
            return self
        config = self.output_config or OutputConfig()
        if config.format is not None:
            raise PydanticCustomError("output_format", "output_format and output_config.format "
                                      "can't both be set: they are the same field")
        self.output_config = config.model_copy(update={"format": self.output_format})
        self.output_format = None
        return self


class MessagesRequest(PromptRequest):
    """Body of ``POST /v1/messages``; ``max_tokens: 0`` is a pre-warm (write cache, no text)."""

    max_tokens: int = Field(ge=0)
    stop_sequences: list[str] = []
    temperature: float = Field(default=1.0, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None
    stream: bool = False
    diagnostics: DiagnosticsParam | None = None
    thread: ThreadParam | None = None  # server-held conversations (server/thread_store.py)
    # false: no speculative decoding for this request (its tokens are the same either way)
    speculative: bool = True
    service_tier: str | None = None  # accepted; there is one tier
    inference_geo: str | None = None  # accepted; inference is wherever this server is
    # Anthropic's fallback retries: the served model never declines a request for policy
    # reasons, so they never run.
    fallback_credit_token: Any = None
    fallbacks: Any = None
    container: Any = None  # refused: see the validator

    refuse_container = field_validator("container", mode="before")(_refused(
        "containers hold code execution state, and this server runs no code execution"))

    null_stops = field_validator("stop_sequences", mode="before")(_none_as_empty)

    @field_validator("stop_sequences")
    @classmethod
    def _non_empty_stops(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise PydanticCustomError("empty_stop", "stop sequences must be non-empty strings")
        return value


def parse_request(model: type[Strict], raw: bytes) -> Any:
    """Validate a JSON body; any problem is a 400 naming the offending field."""
    if (path := lone_surrogate_path(raw)) is not None:
        raise InvalidRequestError(lone_surrogate_message(path))
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        raise InvalidRequestError(describe_validation_error(err)) from None


def describe_validation_error(err: ValidationError) -> str:
    first = err.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return f"malformed JSON body: {first['msg'].removeprefix('Invalid JSON: ')}"
    loc = _without_tags(first["loc"])
    where = ".".join(loc) if loc else "body"
    if first["type"] == "missing":
        return f"{where}: Field required"
    return f"{where}: {first['msg']}"


def _without_tags(loc: tuple[int | str, ...]) -> list[str]:
    """The path to a field, without the union tags pydantic puts in it: a block's type
    after ``content.N`` and a source's type after ``source`` (``messages.0.content.0.text``,
    not ``messages.0.content.0.text.text``)."""
    kept: list[str] = []
    for i, part in enumerate(loc):
        after_block = i >= 2 and loc[i - 2] == "content" and isinstance(loc[i - 1], int)
        after_source = i >= 1 and loc[i - 1] == "source"
        if not (isinstance(part, str) and (after_block or after_source)):
            kept.append(str(part))
    return kept


# ---- responses ------------------------------------------------------------------


class CacheCreation(BaseModel):
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cache_creation: CacheCreation


class TextContent(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingContent(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str


class ToolUseContent(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class MessageResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[Annotated[TextContent | ToolUseContent | ThinkingContent,
                            Field(discriminator="type")]]
    stop_reason: str | None
    stop_sequence: str | None
    usage: Usage
    # {"cache_miss_reason": {...}} when asked for and a divergence was found; else null
    diagnostics: dict[str, Any] | None = None
    # {"applied_edits": [...]} for a request with context_management; else null
    context_management: dict[str, Any] | None = None


class ModelInfo(BaseModel):
    """A model as both SDKs read it: Anthropic's fields, then OpenAI's."""

    id: str
    type: Literal["model"] = "model"
    display_name: str
    created_at: str
    lifecycle: Literal["active"] = "active"
    max_input_tokens: int
    max_tokens: int
    object: Literal["model"] = "model"
    created: int = 0  # Unix time; the release date is unknown, as created_at says
    owned_by: str = "preheat"


class ModelList(BaseModel):
    """A page of models as both SDKs read it (OpenAI's reads ``object`` and ``data``)."""

    data: list[ModelInfo]
    has_more: bool
    first_id: str | None
    last_id: str | None
    object: Literal["list"] = "list"


class TokenCount(BaseModel):
    input_tokens: int
    # {"original_input_tokens": N} for a request with context_management: before its edits
    context_management: dict[str, Any] | None = None
