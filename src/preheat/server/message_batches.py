"""``/v1/messages/batches``: Anthropic's Message Batches API, per API key.

Creating a batch checks only its envelope (the list, each ``custom_id``); each request's
``params`` are checked when it runs, and a bad one is that item's ``errored`` result, as
Anthropic does. The items run on idle capacity (``batch_runner.py``) and everything lives
in the ``BatchStore``; this module answers the API's questions about it.
"""
from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from preheat.server.batch_runner import BatchRunner, prefix_key
from preheat.server.batch_store import (CANCELED, ENDED, ERRORED, EXPIRED, PENDING, RUNNING,
                                        SUCCEEDED, Batch, BatchStore)
from preheat.server.errors import InvalidRequestError, NotFoundError
from preheat.server.protocol import Strict, parse_request

MAX_BATCH_REQUESTS = 100_000  # Anthropic's limit
DAY = 24 * 3600.0


class BatchItemParam(Strict):
    custom_id: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    params: dict[str, Any]  # a Messages API request, checked when the item runs


class BatchCreateRequest(Strict):
    requests: list[BatchItemParam] = Field(min_length=1, max_length=MAX_BATCH_REQUESTS)

    @field_validator("requests")
    @classmethod
    def _unique_ids(cls, value: list[BatchItemParam]) -> list[BatchItemParam]:
        seen: set[str] = set()
        for item in value:
            if item.custom_id in seen:
                raise PydanticCustomError("invalid_value", "custom_id '{id}' is used by more "
                                          "than one request", {"id": item.custom_id})
            seen.add(item.custom_id)
        return value


def new_batch_id() -> str:
    return f"msgbatch_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class MessageBatches:
    store: BatchStore
    runner: BatchRunner
    lifetime_seconds: float = DAY  # a batch expires this long after it was made

    async def create(self, raw: bytes, namespace: str, base_url: str) -> dict[str, Any]:
        body = parse_request(BatchCreateRequest, raw)
        requests = [(r.custom_id, json.dumps(r.params), prefix_key(namespace, r.params))
                    for r in body.requests]
        batch = await asyncio.to_thread(self.store.create, new_batch_id(), namespace,
                                        requests, self.lifetime_seconds)
        self.runner.wake()
        return batch_object(batch, base_url)

    async def retrieve(self, namespace: str, batch_id: str, base_url: str) -> dict[str, Any]:
        return batch_object(await self._batch(namespace, batch_id), base_url)

    async def page(self, namespace: str, limit: int, after_id: str | None,
                   before_id: str | None, base_url: str) -> dict[str, Any]:
        batches, more = await asyncio.to_thread(self.store.page, namespace, limit, after_id,
                                                before_id)
        data = [batch_object(b, base_url) for b in batches]
        return {"data": data, "has_more": more, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}

    async def cancel(self, namespace: str, batch_id: str, base_url: str) -> dict[str, Any]:
        batch = await asyncio.to_thread(self.store.cancel, namespace, batch_id)
        if batch is None:
            raise _not_found(batch_id)
        if batch.status != ENDED:
            self.runner.abort(batch_id)
        return batch_object(batch, base_url)

    async def delete(self, namespace: str, batch_id: str) -> dict[str, Any]:
        batch = await self._batch(namespace, batch_id)
        if batch.status != ENDED:
            raise InvalidRequestError(f"message batch {batch_id} is still processing: cancel "
                                      "it and wait for it to end before deleting it")
        await asyncio.to_thread(self.store.delete, namespace, batch_id)
        return {"id": batch_id, "type": "message_batch_deleted"}

    async def results(self, namespace: str, batch_id: str) -> Iterator[bytes]:
        """The results as JSONL lines, read from the store as they are sent."""
        batch = await self._batch(namespace, batch_id)
        if batch.status != ENDED:
            raise InvalidRequestError(f"message batch {batch_id} has not ended: its results "
                                      "are ready once processing_status is 'ended'")
        return (b'{"custom_id": %s, "result": %s}\n' % (json.dumps(custom_id).encode(),
                                                        result.encode())
                for custom_id, result in self.store.results(batch_id))

    async def _batch(self, namespace: str, batch_id: str) -> Batch:
        batch = await asyncio.to_thread(self.store.get, namespace, batch_id)
        if batch is None:
            raise _not_found(batch_id)
        return batch


def batch_object(batch: Batch, base_url: str) -> dict[str, Any]:
    """A batch as the API returns it (``message_batch``)."""
    counts = batch.counts
    ended = batch.status == ENDED
    return {
        "id": batch.id, "type": "message_batch", "processing_status": batch.status,
        "request_counts": {"processing": counts[PENDING] + counts[RUNNING],
                           "succeeded": counts[SUCCEEDED], "errored": counts[ERRORED],
                           "canceled": counts[CANCELED], "expired": counts[EXPIRED]},
        "created_at": _time(batch.created_at), "expires_at": _time(batch.expires_at),
        "ended_at": _time(batch.ended_at), "cancel_initiated_at": _time(batch.cancel_initiated_at),
        "archived_at": None,
        "results_url": f"{base_url}/v1/messages/batches/{batch.id}/results" if ended else None,
    }


def _time(seconds: float | None) -> str | None:
    """RFC 3339, as the API writes times."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _not_found(batch_id: str) -> NotFoundError:
    return NotFoundError(f"message batch {batch_id} not found")

