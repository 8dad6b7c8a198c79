"""``POST /v1/chat/completions``: OpenAI's request -> the Messages API's request, run by
``MessageService`` -> a ChatCompletion or its ``chat.completion.chunk`` SSE stream.

The prompt, the cache breakpoints, the grammar a reply is held to and the parsing of
tool calls are the Messages API's own: an OpenAI request is translated into a
``MessagesRequest`` (system messages -> ``system``, ``tool_calls`` -> ``tool_use`` blocks,
``tool`` messages -> ``tool_result`` blocks, ``response_format`` ->
``output_config.format``) and prepared and submitted like any other, so a conversation
renders to the same tokens whichever API sends it. Only the response is written anew.
"""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.responses import Response

from preheat.server.cache_policy import MAX_BREAKPOINTS
from preheat.server.errors import APIError, NotFoundError
from preheat.server.lone_surrogates import lone_surrogate_in, lone_surrogate_message
from preheat.server.messages import MessageService, PreparedMessage, SamplingOverrides
from preheat.server.openai_errors import ModelNotFoundError, ParamError, openai_error_body
from preheat.server.openai_protocol import (AssistantMessage, ChatCompletion,
                                            ChatCompletionRequest, ChatMessage, Choice,
                                            CompletionUsage, FunctionDefinition, ImagePart,
                                            PromptCacheOptions, PromptTokensDetails,
                                            RefusalPart, ResponseFunctionCall, ResponseMessage,
                                            ResponseToolCall, SystemMessage, TextPart,
                                            ToolMessage, parse_chat_request)
from preheat.server.protocol import (MessageResponse, MessagesRequest, TextContent,
                                     ToolUseContent, Usage, describe_validation_error)
from preheat.server.reply_events import Closed, Opened, Ping, ReplyEvent
from preheat.server.reply_parser import BlockEvent, BlockStart, JsonPiece, TextPiece
from preheat.server.reply_response import reply_response
from preheat.server.tool_format import dumps

if TYPE_CHECKING:
    from preheat.server.request_record import RequestRecord

# The Messages API's stop reasons -> OpenAI's finish reasons.
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls",
                  "max_tokens": "length", "model_context_window_exceeded": "length"}
# OpenAI's cache lifetimes are minimums; its shortest, 30m, is served by the 1h TTL.
CACHE_TTLS = {"30m": "1h"}
# An SSE comment: keeps proxies from timing out a long prefill; SDKs skip it.
PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class ChatCompletions:
    """Runs Chat Completions requests on a ``MessageService``."""

    service: MessageService

    async def create(self, raw: bytes, namespace: str, request_id: str,
                     is_disconnected: Callable[[], Awaitable[bool]],
                     record: RequestRecord | None = None) -> Response | None:
        """The response to a request body; None if the client went away first. ``record``
        is the HTTP request's (metrics, access log)."""
        body = parse_chat_request(raw)
        prepared = await self._prepare(body, namespace, request_id, record)
        completion_id = f"chatcmpl-{prepared.message_id.removeprefix('msg_')}"
        created = int(time.time())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        writer = ChunkWriter(completion_id, created, body.model, include_usage,
                             calls_only=prepared.output.calls_only)

        async def whole(closed: Closed) -> dict:
            return to_completion(completion_id, created, closed.message).model_dump()

        return await reply_response(self.service, prepared, request_id, body.stream, writer.render,
                                    whole, is_disconnected)

    async def _prepare(self, body: ChatCompletionRequest, namespace: str, request_id: str,
                       record: RequestRecord | None) -> PreparedMessage:
        request = to_messages_request(body, self.service.context_window)
        # OpenAI's sampling where it goes past the Messages API's: temperatures up to 2, a seed
        sampling = SamplingOverrides(temperature=body.temperature, seed=body.seed)
        return await prepare_translated(self.service, request, namespace, request_id, record,
                                        sampling, "messages")


async def prepare_translated(service: MessageService, request: MessagesRequest, namespace: str,
                             request_id: str, record: RequestRecord | None,
                             sampling: SamplingOverrides, input_param: str,
                             **history) -> PreparedMessage:
    """Prepare an OpenAI request translated into ``request``, with OpenAI's errors for an
    unknown model and a prompt that leaves no room to answer (``input_param`` names the
    field that holds the prompt). ``history``: ``MessageService.prepare``'s keywords."""
    try:
        prepared = await service.prepare(request, namespace, request_id, record, sampling,
                                         **history)
    except NotFoundError:  # without a thread, prepare's only 404: an unknown model
        raise ModelNotFoundError(
            f"The model '{request.model}' does not exist on this server") from None
    prompt_tokens = len(prepared.prompt.token_ids)
    context_window = service.context_window
    if prompt_tokens >= context_window:  # one token must fit after the prompt
        raise ParamError(
            f"This model's maximum context length is {context_window} tokens; the "
            f"{input_param} are {prompt_tokens} tokens", input_param, "context_length_exceeded")
    return prepared


@dataclass
class ChunkWriter:
    """Writes one completion's reply as ``chat.completion.chunk`` events."""

    completion_id: str
    created: int
    model: str
    include_usage: bool
    calls_only: bool = False  # the reply can only be tool calls: its content is null
    _calls: dict[int, int] = field(default_factory=dict)  # reply block -> tool call index

    async def render(self, reply: AsyncIterable[ReplyEvent]) -> AsyncIterator[bytes]:
        """The chunks of ``reply``; a failure once the stream has started is an ``error``
        chunk."""
        try:
            async for event in reply:
                for chunk in self._event(event):
                    yield chunk
        except APIError as err:
            yield sse_data(openai_error_body(err))

    def _event(self, event: ReplyEvent) -> list[bytes]:
        if isinstance(event, Ping):
            return [PING]
        if isinstance(event, Opened):
            return [self.delta({"role": "assistant", "content": None if self.calls_only else ""})]
        if isinstance(event, Closed):
            out = [self.delta({}, FINISH_REASONS[event.message.stop_reason])]
            if self.include_usage:
                out.append(self.chunk([], completion_usage(event.message.usage).model_dump()))
            return [*out, DONE]
        chunk = self._block(event)
        return [] if chunk is None else [chunk]

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {"id": self.completion_id, "object": "chat.completion.chunk",
                                "created": self.created, "model": self.model, "choices": choices}
        if self.include_usage:  # null on every chunk but the last, as OpenAI sends it
            data["usage"] = usage
        return sse_data(data)

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self.chunk([{"index": 0, "delta": delta, "logprobs": None,
                            "finish_reason": finish_reason}])

    def _block(self, event: BlockEvent) -> bytes | None:
        if isinstance(event, TextPiece):
            return self.delta({"content": event.text})
        if isinstance(event, JsonPiece):
            return self._call({"index": self._calls[event.index],
                               "function": {"arguments": event.partial_json}})
        if isinstance(event, BlockStart) and event.block["type"] == "tool_use":
            index = self._calls.setdefault(event.index, len(self._calls))
            return self._call({"index": index, "id": call_id(event.block["id"]),
                               "type": "function",
                               "function": {"name": event.block["name"], "arguments": ""}})
        return None  # a text block opening, or any block closing: nothing to say

    def _call(self, piece: dict[str, Any]) -> bytes:
        return self.delta({"tool_calls": [piece]})


def sse_data(data: dict[str, Any]) -> bytes:
    """One event as OpenAI frames it: a ``data:`` line of JSON, no event name."""
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def call_id(tool_use_id: str) -> str:
    """OpenAI's spelling of a tool call's id."""
    return "call_" + tool_use_id.removeprefix("toolu_")


# ---- responses ------------------------------------------------------------------


def to_completion(completion_id: str, created: int, message: MessageResponse) -> ChatCompletion:
    """A finished Message as a ChatCompletion."""
    text = "".join(b.text for b in message.content if isinstance(b, TextContent))
    calls = [ResponseToolCall(id=call_id(b.id), function=ResponseFunctionCall(
                 name=b.name, arguments=dumps(b.input)))
             for b in message.content if isinstance(b, ToolUseContent)]
    reply = ResponseMessage(content=text if text or not calls else None, tool_calls=calls or None)
    return ChatCompletion(
        id=completion_id, created=created, model=message.model,
        choices=[Choice(message=reply, finish_reason=FINISH_REASONS[message.stop_reason])],
        usage=completion_usage(message.usage))


def completion_usage(usage: Usage) -> CompletionUsage:
    """Anthropic's usage in OpenAI's terms: every prompt token is a prompt token, and those
    read from the cache are ``cached_tokens``."""
    prompt = (usage.input_tokens + usage.cache_creation_input_tokens
              + usage.cache_read_input_tokens)
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=usage.output_tokens,
        total_tokens=prompt + usage.output_tokens,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=usage.cache_read_input_tokens,
            cache_write_tokens=usage.cache_creation_input_tokens))


# ---- requests -------------------------------------------------------------------


def to_messages_request(body: ChatCompletionRequest, context_window: int) -> MessagesRequest:
    """The Messages API request that renders and runs as ``body`` asks."""
    options = body.prompt_cache_options or PromptCacheOptions()
    ttl = CACHE_TTLS.get(options.ttl, "5m")
    automatic = options.mode == "implicit"
    system, messages = _conversation(body, ttl)
    tools = [_tool(t.function) for t in body.tools or ()]
    place_breakpoints([*tools, *system], [b for m in messages for b in m["content"]],
                       ttl if automatic else None)
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    return validated_request({
        "model": body.model, "system": system, "messages": messages, "tools": tools,
        "max_tokens": output_limit(body.max_output_tokens, context_window, param),
        "top_p": body.top_p, "stop_sequences": body.stop or [],
        "tool_choice": _tool_choice(body), "output_config": _output_config(body),
        "stream": bool(body.stream),
    }, body.temperature, ttl if automatic else None)


def validated_request(payload: dict[str, Any], temperature: float | None,
                      automatic_ttl: str | None) -> MessagesRequest:
    """An OpenAI request's translation ``payload`` as a Messages API request, with its
    ``temperature`` and, with automatic caching (``automatic_ttl``), a breakpoint at the
    end of the prompt."""
    if temperature is not None:  # the engine gets it whole (up to 2) from the overrides
        payload["temperature"] = min(1.0, temperature)
    if automatic_ttl is not None:  # the Messages API's automatic caching
        payload["cache_control"] = {"type": "ephemeral", "ttl": automatic_ttl}
    try:
        return MessagesRequest.model_validate(payload)
    except ValidationError as err:  # a value OpenAI allows that the Messages API doesn't
        raise ParamError(describe_validation_error(err)) from None


def output_limit(asked: int | None, context_window: int, param: str) -> int:
    """The output limit asked for (in ``param``); without one, the context window ends
    the reply."""
    if asked is None:
        return context_window
    if asked > context_window:
        raise ParamError(f"{param}: {asked} is more than the model's context window "
                         f"({context_window} tokens)", param, "invalid_value")
    return asked


def _conversation(body: ChatCompletionRequest,
                  ttl: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``system`` blocks and ``messages`` in the Messages API's shape."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(body.messages):
        if not isinstance(message, SystemMessage):
            messages.append(_turn(i, message, i == len(body.messages) - 1, ttl))
        elif messages:
            raise ParamError(
                f"messages.{i}.role: system and developer messages must come before the "
                "conversation (the prompt has one system turn)", f"messages.{i}.role",
                "invalid_value")
        else:
            system += _text_blocks(message.content, ttl)
    if not messages:
        raise ParamError("messages: at least one user, assistant or tool message is required",
                         "messages", "invalid_value")
    if messages[-1]["role"] == "assistant":
        _as_prefill(messages[-1])
    return system, messages


def _turn(i: int, message: ChatMessage, is_last: bool, ttl: str) -> dict[str, Any]:
    """A user, assistant or tool message as a Messages API message."""
    if isinstance(message, ToolMessage):
        return {"role": "user", "content": [_tool_result(message, ttl)]}
    if isinstance(message, AssistantMessage):
        content = _assistant_blocks(i, message, ttl)
        if not content and not is_last:  # a final one may be empty: a prefill of nothing
            raise ParamError(f"messages.{i}.content: must hold non-whitespace text or "
                             "tool_calls", f"messages.{i}.content", "invalid_value")
        return {"role": "assistant", "content": content}
    content = [block for part in message.content for block in _user_blocks(part, ttl)]
    if not content:
        raise ParamError(f"messages.{i}.content: must hold non-whitespace text",
                         f"messages.{i}.content", "invalid_value")
    return {"role": "user", "content": content}


def _user_blocks(part: TextPart | ImagePart, ttl: str) -> list[dict[str, Any]]:
    if isinstance(part, ImagePart):
        return [{"type": "image", "source": {"type": "url", "url": part.image_url.url}}]
    return _text_blocks([part], ttl)


def _text_blocks(parts: list[TextPart], ttl: str) -> list[dict[str, Any]]:
    """Text parts with something to read (whitespace-only parts say nothing)."""
    return [{"type": "text", "text": p.text, **cache_control_of(p, ttl)}
            for p in parts if p.text.strip()]


def _assistant_blocks(i: int, message: AssistantMessage, ttl: str) -> list[dict[str, Any]]:
    text = [p for p in message.content if isinstance(p, TextPart)]
    refusals = [p.refusal for p in message.content if isinstance(p, RefusalPart)]
    refusals += [message.refusal] if message.refusal else []
    blocks = _text_blocks(text, ttl) + [{"type": "text", "text": r} for r in refusals
                                        if r.strip()]
    for j, call in enumerate(message.tool_calls or ()):
        blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name,
                       "input": parse_arguments(call.function.arguments,
                                           f"messages.{i}.tool_calls.{j}.function.arguments")})
    return blocks


def parse_arguments(text: str, param: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except (json.JSONDecodeError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise ParamError(f"{param}: must be a JSON object", param, "invalid_value")
    if (inner := lone_surrogate_in(value)) is not None:
        raise ParamError(lone_surrogate_message(f"{param} ({inner})"), param, "invalid_value")
    return value


def _tool_result(message: ToolMessage, ttl: str) -> dict[str, Any]:
    marks = [cache_control_of(p, ttl) for p in message.content if p.prompt_cache_breakpoint]
    return {"type": "tool_result", "tool_use_id": message.tool_call_id,
            "content": [{"type": "text", "text": p.text} for p in message.content],
            **(marks[-1] if marks else {})}


def _as_prefill(message: dict[str, Any]) -> None:
    """A final assistant message is continued (a prefill), which may not end in whitespace."""
    content = message["content"]
    if content and content[-1]["type"] == "text":
        content[-1]["text"] = content[-1]["text"].rstrip()


def cache_control_of(part: TextPart, ttl: str) -> dict[str, Any]:
    """``{"cache_control": ...}`` for a part with a ``prompt_cache_breakpoint``, else ``{}``."""
    mark = part.prompt_cache_breakpoint
    if mark is None:
        return {}
    return {"cache_control": {"type": "ephemeral",
                              "ttl": CACHE_TTLS[mark.ttl] if mark.ttl else ttl}}


def place_breakpoints(preamble: list[dict[str, Any]], conversation: list[dict[str, Any]],
                       automatic_ttl: str | None) -> None:
    """Fit the explicit breakpoints to the Messages API's rules, and with automatic caching
    (``automatic_ttl``) mark the end of the preamble, tools and system: what requests share
    most, so a new conversation reads it though its messages differ.

    There are at most four breakpoints, the automatic ones (preamble, end of the prompt)
    included: the latest explicit ones are kept, as OpenAI keeps them. No 5m breakpoint may
    precede a 1h one: TTLs are minimums, so an earlier one is lengthened.
    """
    blocks = [*preamble, *conversation]
    marked = [b for b in blocks if "cache_control" in b]
    room = MAX_BREAKPOINTS - (0 if automatic_ttl is None else 1 + bool(preamble))
    for block in marked[:-room]:
        del block["cache_control"]
    if automatic_ttl is not None and preamble:
        preamble[-1].setdefault("cache_control", {"type": "ephemeral", "ttl": automatic_ttl})
    longest = "5m"
    for block in reversed(blocks):
        if "cache_control" in block:
            longest = "1h" if block["cache_control"]["ttl"] == "1h" else longest
            block["cache_control"]["ttl"] = longest


def _tool(function: FunctionDefinition) -> dict[str, Any]:
    return {"name": function.name, "description": function.description,
            "input_schema": function.parameters or {"type": "object", "properties": {}},
            "strict": function.strict}


def _tool_choice(body: ChatCompletionRequest) -> dict[str, Any] | None:
    """OpenAI's ``tool_choice`` and ``parallel_tool_calls`` as the Messages API's
    ``tool_choice``: required -> any, a named function -> tool."""
    choice = body.tool_choice.type if body.tool_choice else "auto"
    if choice in ("required", "function") and not body.tools:
        raise ParamError("tool_choice: only allowed when tools are given", "tool_choice",
                         "invalid_value")
    if choice == "function" and body.tool_choice.function.name not in {
            t.function.name for t in body.tools}:
        raise ParamError(f"tool_choice.function.name: no function named "
                         f"{body.tool_choice.function.name!r} in tools",
                         "tool_choice.function.name", "invalid_value")
    if not body.tools:
        return None
    out: dict[str, Any] = {"type": {"none": "none", "auto": "auto", "required": "any",
                                    "function": "tool"}[choice]}
    if choice == "function":
        out["name"] = body.tool_choice.function.name
    if body.parallel_tool_calls is False and choice != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _output_config(body: ChatCompletionRequest) -> dict[str, Any] | None:
    """``response_format`` as a JSON schema the reply is held to (json_object: any object)."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        schema: dict[str, Any] = {"type": "object"}
    else:
        schema = fmt.json_schema.schema_ if fmt.json_schema.schema_ is not None else {}
    return {"format": {"type": "json_schema", "schema": schema}}
