"""A Responses API request -> the Messages API's request, as ``/v1/chat/completions`` does it.

``instructions`` and the system or developer messages that open a new conversation
become ``system``; messages, ``function_call`` and ``function_call_output`` items become
the Messages API's messages (``tool_use`` and ``tool_result`` blocks); a system message
later in the conversation stays where it is. Files become document blocks and images
image blocks, so the Messages API's readers decide what they say. Prompt caching is
automatic unless ``prompt_cache_options.mode`` is ``explicit``, as on Chat Completions.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from preheat.server.openai_chat import (CACHE_TTLS, cache_control_of, output_limit,
                                        parse_arguments, place_breakpoints, validated_request)
from preheat.server.openai_errors import ParamError
from preheat.server.openai_protocol import PromptCacheOptions
from preheat.server.protocol import MessagesRequest
from preheat.server.responses_protocol import (FunctionCallItem, FunctionCallOutputItem,
                                               FunctionTool, InputFile, InputImage, InputText,
                                               MessageItem, NamedFunction, Refusal,
                                               ResponseCreateRequest)

_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(;[^,;]+)*;base64,(?P<data>.*)$", re.S)
_FILE_TYPES = {".pdf": "application/pdf", ".txt": "text/plain", ".md": "text/plain"}


def to_messages_request(body: ResponseCreateRequest, context_window: int,
                        continues: bool) -> MessagesRequest:
    """The Messages API request for ``body``'s own input; ``continues``: it follows a
    stored response (``previous_response_id``), so no item of it opens the conversation."""
    options = body.prompt_cache_options or PromptCacheOptions()
    ttl = CACHE_TTLS.get(options.ttl, "5m")
    automatic = options.mode == "implicit"
    system = [{"type": "text", "text": body.instructions}] if body.instructions else []
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(body.input):
        where = f"input.{i}"
        if (isinstance(item, MessageItem) and item.role in ("system", "developer")
                and not messages and not continues):
            system += _text_blocks(item.content, ttl)
        elif (message := _message(where, item, ttl)) is not None:
            messages.append(message)
    if not messages:
        raise ParamError("input: at least one user message, assistant message or function "
                         "call output is required", "input", "invalid_value")
    tools = [_tool(t) for t in body.tools or ()]
    place_breakpoints([*tools, *system], [b for m in messages for b in m["content"]],
                      ttl if automatic else None)
    fmt = body.text.format if body.text else None
    return validated_request({
        "model": body.model, "system": system, "messages": messages, "tools": tools,
        "max_tokens": output_limit(body.max_output_tokens, context_window, "max_output_tokens"),
        "top_p": body.top_p, "tool_choice": _tool_choice(body), "stream": bool(body.stream),
        "output_config": None if fmt is None or fmt.type == "text" else {"format": {
            "type": "json_schema",
            "schema": {"type": "object"} if fmt.type == "json_object" else fmt.schema_}},
    }, body.temperature, ttl if automatic else None)


def _message(where: str, item: Any, ttl: str) -> dict[str, Any] | None:
    """One input item as a Messages API message (None: the item says nothing to the model)."""
    if isinstance(item, FunctionCallItem):
        return {"role": "assistant", "content": [{
            "type": "tool_use", "id": item.call_id, "name": item.name,
            "input": parse_arguments(item.arguments, f"{where}.arguments")}]}
    if isinstance(item, FunctionCallOutputItem):
        content = [b for part in item.output for b in _part_blocks(part, ttl)]
        return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": item.call_id,
                                             "content": content}]}
    if not isinstance(item, MessageItem):
        return None  # a reasoning item: this server writes none, and reads none back
    content = [b for part in item.content for b in _part_blocks(part, ttl)]
    if not content:
        raise ParamError(f"{where}.content: must hold non-whitespace text", f"{where}.content",
                         "invalid_value")
    role = {"developer": "system"}.get(item.role, item.role)
    if role == "system" and any(b["type"] != "text" for b in content):
        raise ParamError(f"{where}.content: a system or developer message holds text only",
                         f"{where}.content", "invalid_value")
    return {"role": role, "content": content}


def _part_blocks(part: Any, ttl: str) -> list[dict[str, Any]]:
    if isinstance(part, Refusal):
        return [{"type": "text", "text": part.refusal}] if part.refusal.strip() else []
    if isinstance(part, InputImage):
        return [{"type": "image", "source": {"type": "url", "url": part.image_url or ""},
                 **cache_control_of(part, ttl)}]
    if isinstance(part, InputFile):
        return [{**_document(part), **cache_control_of(part, ttl)}]
    return _text_blocks([part], ttl)


def _text_blocks(parts: list[Any], ttl: str) -> list[dict[str, Any]]:
    """Text parts with something to read (whitespace-only parts say nothing)."""
    return [{"type": "text", "text": p.text, **cache_control_of(p, ttl)}
            for p in parts if isinstance(p, InputText) and p.text.strip()]


def _document(part: InputFile) -> dict[str, Any]:
    """An inline file as a document block: a PDF as base64, text as text."""
    found = _DATA_URL.match(part.file_data or "")
    data = found["data"] if found else part.file_data
    suffix = (part.filename or "").lower().rpartition(".")
    media_type = (found and found["type"]) or _FILE_TYPES.get("." + suffix[2] if suffix[1]
                                                              else "", "application/pdf")
    document: dict[str, Any] = {"type": "document", "title": part.filename}
    if media_type == "application/pdf":
        document["source"] = {"type": "base64", "media_type": media_type, "data": data}
        return document
    if not media_type.startswith("text/"):
        raise ParamError(f"input_file: files of type '{media_type}' are not supported: send "
                         "a PDF or text", "input_file", "invalid_value")
    try:
        text = base64.b64decode(data, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ParamError("input_file.file_data: a text file must be base64-encoded UTF-8",
                         "input_file.file_data", "invalid_value") from None
    document["source"] = {"type": "text", "media_type": "text/plain", "data": text}
    return document


def _tool(tool: FunctionTool) -> dict[str, Any]:
    return {"name": tool.name, "description": tool.description,
            "input_schema": tool.parameters or {"type": "object", "properties": {}},
            "strict": tool.strict}


def _tool_choice(body: ResponseCreateRequest) -> dict[str, Any] | None:
    """``tool_choice`` and ``parallel_tool_calls`` as the Messages API's ``tool_choice``."""
    choice = body.tool_choice or "auto"
    named = isinstance(choice, NamedFunction)
    if (named or choice == "required") and not body.tools:
        raise ParamError("tool_choice: only allowed when tools are given", "tool_choice",
                         "invalid_value")
    if named and choice.name not in {t.name for t in body.tools}:
        raise ParamError(f"tool_choice.name: no function named {choice.name!r} in tools",
                         "tool_choice.name", "invalid_value")
    if not body.tools:
        return None
    out: dict[str, Any] = ({"type": "tool", "name": choice.name} if named else
                           {"type": {"none": "none", "auto": "auto", "required": "any"}[choice]})
    if body.parallel_tool_calls is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out
