"""A reply as a Responses API response: the whole ``response`` object, or its typed
stream (``response.created`` ... ``response.completed``), rendered from the one reply
pipeline's events (``server/reply.py``).

Each content block of the reply is one output item, in order: a text block a ``message``
item with one ``output_text`` part, a tool_use block a ``function_call`` item. Item ids
are made from the response's id and the block's place, so the streamed items and the
response they add up to (and the one stored) name them alike.
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from preheat.server.errors import APIError
from preheat.server.openai_chat import call_id
from preheat.server.protocol import MessageResponse, TextContent, ToolUseContent, Usage
from preheat.server.reply_events import Closed, Opened, Ping, ReplyEvent
from preheat.server.reply_parser import BlockStart, BlockStop, JsonPiece, TextPiece
from preheat.server.openai_protocol import PromptTokensDetails
from preheat.server.responses_protocol import (FunctionCall, IncompleteDetails, OutputItem,
                                               OutputMessage, OutputText, ResponseCreateRequest,
                                               ResponseError, ResponseObject, ResponseUsage)
from preheat.server.sse import sse_event
from preheat.server.tool_format import dumps

# A comment line: keeps proxies from timing out a long prefill; SDKs skip it.
PING = b": ping\n\n"
# Stop reasons that mean the reply was cut short.
_CUT_SHORT = {"max_tokens", "model_context_window_exceeded"}


@dataclass(frozen=True)
class ResponseShape:
    """What every state of one response shares: its id, its birth, the request it echoes."""

    id: str
    body: ResponseCreateRequest
    created_at: int = field(default_factory=lambda: int(time.time()))

    def item_id(self, kind: str, index: int) -> str:
        """The id of the output item made from the reply's block ``index``."""
        return f"{kind}_{self.id.removeprefix('resp_')}{index:02x}"

    def response(self, status: str, output: list[OutputItem] = (), usage: Usage | None = None,
                 reused_tokens: int = 0, error: ResponseError | None = None) -> ResponseObject:
        body = self.body
        fmt = body.text.format if body.text and body.text.format else None
        return ResponseObject(
            id=self.id, created_at=self.created_at, status=status,
            completed_at=int(time.time()) if status in ("completed", "incomplete") else None,
            error=error,
            incomplete_details=(IncompleteDetails(reason="max_output_tokens")
                                if status == "incomplete" else None),
            instructions=body.instructions, max_output_tokens=body.max_output_tokens,
            model=body.model, output=list(output),
            parallel_tool_calls=body.parallel_tool_calls is not False,
            previous_response_id=body.previous_response_id,
            reasoning={"effort": None, "summary": None}, store=body.stores,
            temperature=1.0 if body.temperature is None else body.temperature,
            text={"format": {"type": "text"} if fmt is None else
                  fmt.model_dump(by_alias=True, exclude_none=True),
                  "verbosity": body.text.verbosity if body.text and body.text.verbosity
                  else "medium"},
            tool_choice=(body.tool_choice.model_dump() if hasattr(body.tool_choice, "name")
                         else body.tool_choice or "auto"),
            tools=[t.model_dump(exclude_none=True) for t in body.tools or ()],
            top_p=1.0 if body.top_p is None else body.top_p,
            usage=None if usage is None else response_usage(usage, reused_tokens),
            user=body.user, metadata=body.metadata or {})

    def finished(self, message: MessageResponse, reused_tokens: int = 0) -> ResponseObject:
        """The response to a whole reply; ``reused_tokens`` of its prompt were in the KV
        cache when it was admitted (``Finished.reused_prompt_tokens``)."""
        status = "incomplete" if message.stop_reason in _CUT_SHORT else "completed"
        item_status = "incomplete" if status == "incomplete" else "completed"
        output: list[OutputItem] = []
        for i, block in enumerate(message.content):
            if isinstance(block, TextContent):
                output.append(self.message_item(i, block.text, item_status))
            elif isinstance(block, ToolUseContent):
                output.append(self.call_item(i, block.id, block.name, dumps(block.input),
                                             item_status))
        return self.response(status, output, message.usage, reused_tokens)

    def message_item(self, index: int, text: str | None, status: str) -> OutputMessage:
        """A text block's item; ``text`` None: just opened, no part yet."""
        return OutputMessage(id=self.item_id("msg", index), status=status,
                             content=[] if text is None else [OutputText(text=text)])

    def call_item(self, index: int, tool_use_id: str, name: str, arguments: str,
                  status: str) -> FunctionCall:
        return FunctionCall(id=self.item_id("fc", index), call_id=call_id(tool_use_id),
                            name=name, arguments=arguments, status=status)


def response_usage(usage: Usage, reused_tokens: int = 0) -> ResponseUsage:
    """Usage in OpenAI's terms: every prompt token is an input token, and
    ``cached_tokens`` are those not prefilled: read from a pinned prefix, or found in the KV
    cache (a stored response's held conversation, an earlier prompt's blocks). Cache
    writes count only what this request prefilled and pinned."""
    prompt = (usage.input_tokens + usage.cache_creation_input_tokens
              + usage.cache_read_input_tokens)
    read = usage.cache_read_input_tokens
    cached = max(read, reused_tokens)
    return ResponseUsage(
        input_tokens=prompt, output_tokens=usage.output_tokens,
        total_tokens=prompt + usage.output_tokens,
        input_tokens_details=PromptTokensDetails(
            cached_tokens=cached,
            cache_write_tokens=max(0, usage.cache_creation_input_tokens - (cached - read))))


# Called with the finished response once the reply is whole (a stream's: before its
# last event goes out), to store it.
OnFinished = Callable[[ResponseObject, Closed], Awaitable[None]]


@dataclass
class ResponseEvents:
    """Writes one response's reply as the Responses API's typed server-sent events."""

    shape: ResponseShape
    on_finished: OnFinished
    _sequence: int = 0
    _text: dict[int, str] = field(default_factory=dict)  # block -> its text so far
    _calls: dict[int, FunctionCall] = field(default_factory=dict)  # block -> its call so far

    async def render(self, reply: AsyncIterable[ReplyEvent]) -> AsyncIterator[bytes]:
        """The events of ``reply``; a failure once the stream has started ends it with
        ``response.failed``."""
        try:
            async for event in reply:
                if isinstance(event, Ping):
                    yield PING
                elif isinstance(event, Closed):
                    final = self.shape.finished(event.message,
                                                event.finished.reused_prompt_tokens)
                    await self.on_finished(final, event)
                    yield self._event(f"response.{final.status}", response=final.model_dump())
                else:
                    for frame in self._frames(event):
                        yield frame
        except APIError as err:
            failed = self.shape.response("failed", error=ResponseError(
                code="server_error" if err.status >= 500 else "invalid_request_error",
                message=err.message))
            yield self._event("response.failed", response=failed.model_dump())

    def _frames(self, event: ReplyEvent) -> list[bytes]:
        if isinstance(event, Opened):
            opened = self.shape.response("in_progress").model_dump()
            return [self._event("response.created", response=opened),
                    self._event("response.in_progress", response=opened)]
        if isinstance(event, BlockStart):
            return self._start(event.index, event.block)
        if isinstance(event, TextPiece):
            self._text[event.index] += event.text
            return [self._event("response.output_text.delta", **self._part_of(event.index),
                                delta=event.text, logprobs=[])]
        if isinstance(event, JsonPiece):
            call = self._calls[event.index]
            call.arguments += event.partial_json
            return [self._event("response.function_call_arguments.delta", item_id=call.id,
                                output_index=event.index, delta=event.partial_json)]
        if isinstance(event, BlockStop):
            return self._stop(event.index)
        return []  # thinking: a response that does not think has none

    def _start(self, index: int, block: dict[str, Any]) -> list[bytes]:
        if block["type"] == "tool_use":
            call = self.shape.call_item(index, block["id"], block["name"], "", "in_progress")
            self._calls[index] = call
            return [self._event("response.output_item.added", output_index=index,
                                item=call.model_dump())]
        if block["type"] != "text":
            return []
        self._text[index] = ""
        item = self.shape.message_item(index, None, "in_progress")
        return [self._event("response.output_item.added", output_index=index,
                            item=item.model_dump()),
                self._event("response.content_part.added", **self._part_of(index),
                            part=OutputText(text="").model_dump())]

    def _stop(self, index: int) -> list[bytes]:
        if index in self._calls:
            call = self._calls.pop(index)
            done = call.model_copy(update={"status": "completed"})
            return [self._event("response.function_call_arguments.done", item_id=call.id,
                                output_index=index, arguments=call.arguments),
                    self._event("response.output_item.done", output_index=index,
                                item=done.model_dump())]
        if index not in self._text:
            return []
        text = self._text.pop(index)
        part = OutputText(text=text)
        return [self._event("response.output_text.done", **self._part_of(index), text=text,
                            logprobs=[]),
                self._event("response.content_part.done", **self._part_of(index),
                            part=part.model_dump()),
                self._event("response.output_item.done", output_index=index,
                            item=self.shape.message_item(index, text, "completed").model_dump())]

    def _part_of(self, index: int) -> dict[str, Any]:
        return {"item_id": self.shape.item_id("msg", index), "output_index": index,
                "content_index": 0}

    def _event(self, kind: str, **data: Any) -> bytes:
        frame = sse_event(kind, {"type": kind, "sequence_number": self._sequence, **data})
        self._sequence += 1
        return frame
