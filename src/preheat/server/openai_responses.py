"""``/v1/responses``: OpenAI's Responses API over the one reply pipeline.

A request is translated into a ``MessagesRequest`` (``responses_input.py``), prepared and
run by ``MessageService`` like any other, and its reply rendered as a response object or
its typed event stream (``responses_output.py``). A stored response (``store``, on by
default) keeps its conversation with the exact tokens of its prompt and reply
(``response_store.py``), and the engine holds their KV for ``hold_seconds``: a request
with ``previous_response_id`` then continues from those tokens, so only its new input is
prefilled. ``instructions`` and ``tools`` are the request's own, as OpenAI has it; where
they differ from the stored response's, the conversation is rendered afresh under them.
"""
from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from preheat.server.errors import NotFoundError
from preheat.server.messages import MessageService, PreparedMessage, SamplingOverrides
from preheat.server.openai_chat import prepare_translated
from preheat.server.openai_protocol import parse_openai_request
from preheat.server.reply_events import Closed
from preheat.server.reply_response import reply_response
from preheat.server.response_store import ResponseStore, StoredResponse
from preheat.server.responses_input import to_messages_request
from preheat.server.responses_output import ResponseEvents, ResponseShape
from preheat.server.responses_protocol import (FunctionCallItem, FunctionCallOutputItem,
                                               MessageItem, ResponseCreateRequest,
                                               ResponseObject)

if TYPE_CHECKING:
    from preheat.server.request_record import RequestRecord

MAX_LIST_LIMIT = 100


class ResponseNotFoundError(NotFoundError):
    """A 404 for a response id this key has no stored response under."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


def new_response_id() -> str:
    return f"resp_{secrets.token_hex(24)}"


@dataclass(frozen=True)
class Responses:
    """Runs, stores and serves Responses API requests."""

    service: MessageService
    store: ResponseStore
    hold_seconds: float  # how long the KV of a stored response is held for its next turn

    async def create(self, raw: bytes, namespace: str, request_id: str,
                     is_disconnected: Callable[[], Awaitable[bool]],
                     record: RequestRecord | None = None) -> Response | None:
        """The response to a request body; None if the client went away first."""
        body = parse_openai_request(ResponseCreateRequest, raw)
        previous = await self._previous(body, namespace)
        prepared = await self._prepare(body, previous, namespace, request_id, record)
        shape = ResponseShape(new_response_id(), body)
        items = _input_items(shape, body)

        async def finished(response: ResponseObject, closed: Closed) -> None:
            if body.stores:
                history = self.service.history_after(prepared, closed.message, closed.finished)
                await asyncio.to_thread(self.store.put, namespace, StoredResponse(
                    shape.id, response.model_dump(), items, history))

        async def whole(closed: Closed) -> dict:
            response = shape.finished(closed.message, closed.finished.reused_prompt_tokens)
            await finished(response, closed)
            return response.model_dump()

        return await reply_response(self.service, prepared, request_id, body.stream,
                                    ResponseEvents(shape, finished).render, whole, is_disconnected)

    async def _previous(self, body: ResponseCreateRequest,
                        namespace: str) -> StoredResponse | None:
        if body.previous_response_id is None:
            return None
        stored = await asyncio.to_thread(self.store.get, namespace, body.previous_response_id)
        if stored is None:
            raise ResponseNotFoundError(
                f"Previous response with id '{body.previous_response_id}' not found.",
                "previous_response_id", "previous_response_not_found")
        return stored

    async def _prepare(self, body: ResponseCreateRequest, previous: StoredResponse | None,
                       namespace: str, request_id: str, record: RequestRecord | None) -> PreparedMessage:
        request = to_messages_request(body, self.service.context_window,
                                      continues=previous is not None)
        history = None
        if previous is not None:
            held = previous.history
            if held.same_preamble(request):  # its tokens begin this prompt: continue on them
                history = held
            else:  # other instructions or tools: the conversation rendered under them
                request = request.model_copy(
                    update={"messages": held.messages + request.messages})
        sampling = SamplingOverrides(temperature=body.temperature)
        return await prepare_translated(
            self.service, request, namespace, request_id, record, sampling, "input",
            history=history, hold_seconds=self.hold_seconds if body.stores else 0.0)

    async def retrieve(self, namespace: str, response_id: str) -> dict[str, Any]:
        return (await self._stored(namespace, response_id)).response

    async def delete(self, namespace: str, response_id: str) -> dict[str, Any]:
        if not await asyncio.to_thread(self.store.delete, namespace, response_id):
            raise _not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    async def input_items(self, namespace: str, response_id: str, limit: int = 20,
                          order: str = "desc", after: str | None = None) -> dict[str, Any]:
        """A page of the response's input items (``order`` by position, ``after`` an id)."""
        items = list((await self._stored(namespace, response_id)).input_items)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item["id"] for item in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        page = items[:limit]
        return {"object": "list", "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > len(page)}

    async def _stored(self, namespace: str, response_id: str) -> StoredResponse:
        stored = await asyncio.to_thread(self.store.get, namespace, response_id)
        if stored is None:
            raise _not_found(response_id)
        return stored


def _not_found(response_id: str) -> ResponseNotFoundError:
    return ResponseNotFoundError(f"Response with id '{response_id}' not found.")


def _input_items(shape: ResponseShape, body: ResponseCreateRequest) -> list[dict[str, Any]]:
    """The request's input items as ``input_items`` lists them: each with an id and a
    status (reasoning items are left out: they were not model input)."""
    items: list[dict[str, Any]] = []
    for i, item in enumerate(body.input):
        if not isinstance(item, (MessageItem, FunctionCallItem, FunctionCallOutputItem)):
            continue
        kind = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}[item.type]
        data = item.model_dump(exclude_none=True)
        data["id"] = item.id or f"{kind}_in{shape.id.removeprefix('resp_')}{i:02x}"
        data["status"] = item.status or "completed"
        items.append(data)
    return items
