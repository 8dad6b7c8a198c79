"""Stored OpenAI responses (``store: true``): an embedded SQLite database, per API key.

A row keeps what the Responses API hands back (the response object and its input items)
and the ``HeldHistory`` a ``previous_response_id`` continues from: the conversation in
the Messages API's shape and its exact token ids. Rows outlive the process (the file is
under the cache dir) and are deleted ``retention_seconds`` after they were made. The KV
the engine held for a response does not outlive the engine; a continue after that
prefills its history again, from the same tokens.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preheat.server.held_history import HeldHistory
from preheat.server.prompt_builder import PromptBlock
from preheat.server.protocol import InputMessage, TextBlock, Tool, ToolChoice

THIRTY_DAYS = 30 * 24 * 3600.0  # OpenAI keeps stored responses this long

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    created_at REAL NOT NULL,
    response TEXT NOT NULL,     -- the response object, JSON
    input_items TEXT NOT NULL,  -- this request's input items, JSON, oldest first
    history TEXT NOT NULL,      -- HeldHistory without its token ids, JSON
    token_ids BLOB NOT NULL,    -- HeldHistory.token_ids, int32
    PRIMARY KEY (namespace, id)
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created_at);
"""


@dataclass(frozen=True)
class StoredResponse:
    """One stored response: what the API returns of it, and what continues from it."""

    id: str
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: HeldHistory


class ResponseStore:
    """Responses by (API key namespace, id). Thread-safe: calls may come from worker threads."""

    def __init__(self, path: Path | None = None, retention_seconds: float = THIRTY_DAYS,
                 clock: Callable[[], float] = time.time):
        """``path`` None keeps the rows in memory, for this process only."""
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(":memory:" if path is None else path,
                                   check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait on the writer
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.retention_seconds = retention_seconds
        self._clock = clock

    def put(self, namespace: str, stored: StoredResponse) -> None:
        """Store a response (and drop those past retention)."""
        now = self._clock()
        history = stored.history
        row = (namespace, stored.id, now, json.dumps(stored.response),
               json.dumps(stored.input_items), json.dumps(_history_fields(history)),
               array("i", history.token_ids).tobytes())
        with self._lock:
            self._db.execute("DELETE FROM responses WHERE created_at < ?",
                             (now - self.retention_seconds,))
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    def get(self, namespace: str, response_id: str) -> StoredResponse | None:
        """The stored response, or None (unknown, deleted, expired or another key's)."""
        with self._lock:
            row = self._db.execute(
                "SELECT response, input_items, history, token_ids FROM responses "
                "WHERE namespace = ? AND id = ? AND created_at >= ?",
                (namespace, response_id, self._clock() - self.retention_seconds)).fetchone()
        if row is None:
            return None
        response, items, history, token_ids = row
        ids = array("i")
        ids.frombytes(token_ids)
        return StoredResponse(response_id, json.loads(response), json.loads(items),
                              _history_from(json.loads(history), ids.tolist()))

    def delete(self, namespace: str, response_id: str) -> bool:
        """Delete a stored response; False if there was none to delete."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM responses WHERE namespace = ? AND id = ?",
                                      (namespace, response_id))
        return cursor.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _history_fields(history: HeldHistory) -> dict[str, Any]:
    return {
        "system": [b.model_dump(exclude_none=True) for b in history.system],
        "tools": [t.model_dump(exclude_none=True) for t in history.tools],
        "tool_choice": (None if history.tool_choice is None
                        else history.tool_choice.model_dump(exclude_none=True)),
        "messages": [m.model_dump(exclude_none=True) for m in history.messages],
        "blocks": [[b.section, b.end] for b in history.blocks],  # marks are never held
    }


def _history_from(fields: dict[str, Any], token_ids: list[int]) -> HeldHistory:
    choice = fields["tool_choice"]
    return HeldHistory(
        system=[TextBlock.model_validate(b) for b in fields["system"]],
        tools=[Tool.model_validate(t) for t in fields["tools"]],
        messages=[InputMessage.model_validate(m) for m in fields["messages"]],
        token_ids=token_ids,
        blocks=[PromptBlock(section, end, None) for section, end in fields["blocks"]],
        tool_choice=None if choice is None else ToolChoice.model_validate(choice))
