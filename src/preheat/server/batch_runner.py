"""Runs Message Batches' items on the engine's idle capacity.

One task for the server's lifetime takes pending items from the ``BatchStore`` and runs
each as a ``/v1/messages`` request of the batch's API key, through ``MessageService``
(the same prompt, cache rules, grammars and usage), marked ``background``: the engine
steps it only while no interactive request needs the capacity. At most ``concurrency``
items are in flight, so batch work never fills the engine's queue.

Items that share a prefix (the same model, system and tools: one document, many
questions) share its prefill: the first of them runs alone, and the rest only once it is
done, so they read the prefix from the cache instead of each computing it. A refusal for
overload puts an item back; any other error is the item's ``errored`` result. A cancel or
an expiry aborts the batch's items in flight; a shutdown leaves them for the next start.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass, field

from preheat.server.batch_store import (CANCELED, ERRORED, SUCCEEDED, BatchStore, Item)
from preheat.server.errors import APIError, InvalidRequestError, OverloadedError
from preheat.server.messages import MessageService
from preheat.server.protocol import MessagesRequest, parse_request
from preheat.server.whole_reply import whole_reply

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # how often expiry and retention are looked at with nothing to wake for
RETRY_SECONDS = 0.5  # how soon an item refused for overload is tried again
LOOK_AHEAD = 4  # pending items read per free slot


@dataclass
class BatchRunner:
    service: MessageService
    store: BatchStore
    concurrency: int = 16
    retention_seconds: float = 29 * 24 * 3600.0
    _in_flight: dict[tuple[str, int], asyncio.Task] = field(default_factory=dict)
    _warming: dict[str, tuple[str, int]] = field(default_factory=dict)  # prefix -> its first item
    _warm: set[str] = field(default_factory=set)  # prefixes whose first item is done
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _canceling: set[str] = field(default_factory=set)  # batches whose items are aborted
    _next_housekeeping: float = 0.0

    def wake(self) -> None:
        """New work, or a cancel: look now rather than at the next poll."""
        self._wake.set()

    def abort(self, batch_id: str) -> None:
        """End the batch's items in flight (it was canceled): each records ``canceled``."""
        self._canceling.add(batch_id)
        for (owner, _), task in list(self._in_flight.items()):
            if owner == batch_id:
                task.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self) -> None:
        """Until cancelled (the server stops): items in flight then stay running in the
        store, and the next start runs them again."""
        try:
            while True:
                await self._housekeeping()
                for item in await self._next_items():
                    key = (item.batch_id, item.position)
                    self._in_flight[key] = asyncio.create_task(self._run_item(item))
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
        finally:
            tasks = list(self._in_flight.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _housekeeping(self) -> None:
        """Expiry and retention, at most once a poll (not on every wake)."""
        now = asyncio.get_running_loop().time()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + POLL_SECONDS
        for batch_id in await asyncio.to_thread(self.store.expire):
            self._canceling.add(batch_id)  # its results say expired already
            for (owner, _), task in list(self._in_flight.items()):
                if owner == batch_id:
                    task.cancel()
        cutoff = self.store.clock() - self.retention_seconds
        await asyncio.to_thread(self.store.drop_ended_before, cutoff)

    async def _next_items(self) -> list[Item]:
        """Pending items to start now, within the free slots, the first of each prefix
        group alone until it is done."""
        free = self.concurrency - len(self._in_flight)
        if free <= 0:
            return []
        chosen: list[Item] = []
        # a look ahead of a few slots' worth: enough past the items held for a warming prefix
        pending = await asyncio.to_thread(self.store.pending, LOOK_AHEAD * self.concurrency)
        if not pending:
            self._warm.clear()  # nothing left that could read them
        for item in pending:
            if len(chosen) == free:
                break
            if (item.batch_id, item.position) in self._in_flight:
                continue
            prefix = item.prefix
            if prefix is not None and prefix not in self._warm:
                if prefix in self._warming:
                    continue  # its prefix is being written: read it once it is there
                self._warming[prefix] = (item.batch_id, item.position)
            chosen.append(item)
        return await asyncio.to_thread(self.store.start, chosen)

    async def _run_item(self, item: Item) -> None:
        key = (item.batch_id, item.position)
        try:
            state, result = await self._outcome(item)
        except OverloadedError:
            await asyncio.to_thread(self.store.release, item)
            await asyncio.sleep(RETRY_SECONDS)
            state = None
        except asyncio.CancelledError:
            if item.batch_id not in self._canceling:
                raise  # the server stops: the item runs again at the next start
            state, result = CANCELED, {"type": "canceled"}
        finally:
            self._in_flight.pop(key, None)
            prefix = item.prefix
            if prefix is not None and self._warming.get(prefix) == key:
                del self._warming[prefix]
                self._warm.add(prefix)
            self.wake()
        if state is not None:
            await asyncio.to_thread(self.store.finish, item, state, result)

    async def _outcome(self, item: Item) -> tuple[str, dict]:
        """The item's state and result: the message it got, or the error it is."""
        request_id = f"{item.batch_id}:{item.position}"
        try:
            body = parse_request(MessagesRequest, item.params.encode())
            if body.stream:
                raise InvalidRequestError("stream: requests in a batch may not stream")
            prepared = await self.service.prepare(body, item.namespace, request_id,
                                                  background=True)
            reply = await self.service.run(prepared, heartbeat=POLL_SECONDS)
            closed = await whole_reply(reply, _connected)
        except OverloadedError:
            raise
        except APIError as err:
            return ERRORED, {"type": "errored", "error": err.body(request_id)}
        except Exception:
            log.exception("batch item %s failed", request_id)
            return ERRORED, {"type": "errored", "error": {
                "type": "error", "error": {"type": "api_error",
                                           "message": "Internal server error"}}}
        return SUCCEEDED, {"type": "succeeded", "message": closed.message.model_dump()}


async def _connected() -> bool:
    return False  # nobody to hang up: the item runs to its end


def prefix_key(namespace: str, params: dict) -> str | None:
    """What the prompts of requests that share a prefix have in common: the key, model,
    tools and system (None: they have neither tools nor system)."""
    if not (params.get("system") or params.get("tools")):
        return None
    text = json.dumps([namespace, params.get("model"), params.get("tools"),
                       params.get("system")], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
