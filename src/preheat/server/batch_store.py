"""Message Batches' state: an embedded SQLite database under the cache dir, per API key.

A batch is a row; each of its requests an item row with its ``custom_id``, its params as
sent (validated when it runs) and, once done, its state and result. Every change is one
transaction, so a batch survives a crash as it was at its last commit: an item that was
running when the process died is pending again at the next start, and a result is
written once per item (its row), so a restart never yields two. Results larger than
``spill_bytes`` live in a file beside the database, written and synced before the row
that names it; a row whose file is missing or torn is run again.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# item states; ``processing`` in the API's counts is pending + running
PENDING, RUNNING = "pending", "running"
SUCCEEDED, ERRORED, CANCELED, EXPIRED = "succeeded", "errored", "canceled", "expired"
DONE = (SUCCEEDED, ERRORED, CANCELED, EXPIRED)
# batch states, as the API names them
IN_PROGRESS, CANCELING, ENDED = "in_progress", "canceling", "ended"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    cancel_initiated_at REAL,
    ended_at REAL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_tenant ON batches (namespace, created_at);
CREATE TABLE IF NOT EXISTS items (
    batch_id TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    params TEXT NOT NULL,
    prefix TEXT,        -- what items sharing a cached prefix have in common (None: nothing)
    state TEXT NOT NULL,
    result TEXT,        -- the result JSON, or NULL if it is in result_file
    result_file TEXT,
    PRIMARY KEY (batch_id, position)
);
CREATE INDEX IF NOT EXISTS items_by_state ON items (state, batch_id, position);
"""


@dataclass(frozen=True)
class Batch:
    id: str
    namespace: str
    created_at: float
    expires_at: float
    cancel_initiated_at: float | None
    ended_at: float | None
    status: str
    counts: dict[str, int]  # items per state


@dataclass(frozen=True)
class Item:
    batch_id: str
    namespace: str
    position: int
    custom_id: str
    prefix: str | None  # items with the same one share a prompt prefix
    params: str = ""  # JSON, as sent (loaded once the item starts)


class BatchStore:
    """Batches and their items. Thread-safe; every method is one transaction."""

    def __init__(self, path: Path | None = None, spill_bytes: int = 256 * 1024,
                 clock: Callable[[], float] = time.time):
        """``path`` None keeps everything in memory (and spills nothing)."""
        self._files = None if path is None else path.with_suffix(".results")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(":memory:" if path is None else path,
                                   check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.spill_bytes = spill_bytes
        self.clock = clock
        self._recover()

    def _recover(self) -> None:
        """What a crash left: running items are pending again, and so is any whose result
        file is missing or torn."""
        with self._tx() as db:
            db.execute("UPDATE items SET state = ? WHERE state = ?", (PENDING, RUNNING))
            for batch_id, position, name in db.execute(
                    "SELECT batch_id, position, result_file FROM items "
                    "WHERE result_file IS NOT NULL").fetchall():
                if self._read_file(name) is None:
                    db.execute("UPDATE items SET state = ?, result_file = NULL "
                               "WHERE batch_id = ? AND position = ?", (PENDING, batch_id, position))
                    # it ended on a result that is gone: it has work again
                    db.execute("UPDATE batches SET status = ?, ended_at = NULL WHERE id = ? AND "
                               "status = ? AND cancel_initiated_at IS NULL",
                               (IN_PROGRESS, batch_id, ENDED))

    # ---- batches ----------------------------------------------------------------------

    def create(self, batch_id: str, namespace: str,
               requests: list[tuple[str, str, str | None]], lifetime_seconds: float) -> Batch:
        """A new batch of ``(custom_id, params JSON, prefix)`` requests, all pending."""
        now = self.clock()
        with self._tx() as db:
            db.execute("INSERT INTO batches VALUES (?, ?, ?, ?, NULL, NULL, ?)",
                       (batch_id, namespace, now, now + lifetime_seconds, IN_PROGRESS))
            db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
                           [(batch_id, i, custom_id, params, prefix, PENDING)
                            for i, (custom_id, params, prefix) in enumerate(requests)])
        return self.get(namespace, batch_id)

    def get(self, namespace: str, batch_id: str) -> Batch | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM batches WHERE id = ? AND namespace = ?",
                                   (batch_id, namespace)).fetchone()
            return None if row is None else self._batch(row)

    def page(self, namespace: str, limit: int, after_id: str | None,
             before_id: str | None) -> tuple[list[Batch], bool]:
        """The tenant's batches, newest first: ``limit`` of them after (older than)
        ``after_id`` or before (newer than) ``before_id``, and whether there are more."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM batches WHERE namespace = ? "
                                    "ORDER BY created_at DESC, id DESC", (namespace,)).fetchall()
            ids = [r[0] for r in rows]
            if before_id is not None:
                rows = rows[:ids.index(before_id)] if before_id in ids else []
                return [self._batch(r) for r in rows[-limit:]], len(rows) > limit
            if after_id is not None:
                rows = rows[ids.index(after_id) + 1:] if after_id in ids else []
            return [self._batch(r) for r in rows[:limit]], len(rows) > limit

    def cancel(self, namespace: str, batch_id: str) -> Batch | None:
        """Pending items are canceled at once; the batch is ``canceling`` until its running
        items end (``end_finished``)."""
        with self._tx() as db:
            row = db.execute("SELECT status FROM batches WHERE id = ? AND namespace = ?",
                             (batch_id, namespace)).fetchone()
            if row is None:
                return None
            if row[0] == IN_PROGRESS:
                db.execute("UPDATE batches SET status = ?, cancel_initiated_at = ? WHERE id = ?",
                           (CANCELING, self.clock(), batch_id))
                db.execute("UPDATE items SET state = ?, result = ? WHERE batch_id = ? "
                           "AND state = ?", (CANCELED, json.dumps({"type": "canceled"}),
                                             batch_id, PENDING))
        self.end_finished()
        return self.get(namespace, batch_id)

    def delete(self, namespace: str, batch_id: str) -> bool:
        with self._tx() as db:
            names = [r[0] for r in db.execute(
                "SELECT result_file FROM items WHERE batch_id = ? AND result_file IS NOT NULL "
                "AND batch_id IN (SELECT id FROM batches WHERE namespace = ?)",
                (batch_id, namespace))]
            deleted = db.execute("DELETE FROM batches WHERE id = ? AND namespace = ?",
                                 (batch_id, namespace)).rowcount > 0
        for name in names:
            self._remove_file(name)
        return deleted

    def expire(self) -> list[str]:
        """Batches past their expiry: unfinished items ``expired``, the batch ended. Returns
        the ids of those that ended so."""
        now = self.clock()
        with self._tx() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM batches WHERE status != ? AND expires_at <= ?", (ENDED, now))]
            for batch_id in ids:
                db.execute("UPDATE items SET state = ?, result = ? WHERE batch_id = ? AND "
                           "state IN (?, ?)", (EXPIRED, json.dumps({"type": "expired"}),
                                               batch_id, PENDING, RUNNING))
        self.end_finished()
        return ids

    def drop_ended_before(self, cutoff: float) -> int:
        """Delete batches that ended before ``cutoff`` (their retention is over)."""
        with self._lock:
            rows = self._db.execute("SELECT id, namespace FROM batches WHERE status = ? AND "
                                    "ended_at < ?", (ENDED, cutoff)).fetchall()
        return sum(self.delete(namespace, batch_id) for batch_id, namespace in rows)

    def end_finished(self) -> None:
        """Batches with no pending or running item left are ended."""
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET status = ?, ended_at = ? WHERE status != ? AND NOT EXISTS "
                "(SELECT 1 FROM items WHERE items.batch_id = batches.id AND state IN (?, ?))",
                (ENDED, self.clock(), ENDED, PENDING, RUNNING))

    # ---- items --------------------------------------------------------------------------

    def pending(self, limit: int) -> list[Item]:
        """The first ``limit`` pending items of unfinished batches, oldest batch first, in
        submission order (without their params)."""
        with self._lock:
            return [Item(*row) for row in self._db.execute(
                "SELECT items.batch_id, namespace, position, custom_id, prefix FROM items "
                "JOIN batches ON batches.id = items.batch_id WHERE state = ? AND status = ? "
                "ORDER BY batches.created_at, items.batch_id, position LIMIT ?",
                (PENDING, IN_PROGRESS, limit))]

    def start(self, items: list[Item]) -> list[Item]:
        """Mark pending items running; returns those that were still pending, with their
        params."""
        started = []
        with self._tx() as db:
            for item in items:
                row = db.execute("UPDATE items SET state = ? WHERE batch_id = ? AND position = ? "
                                 "AND state = ? RETURNING params",
                                 (RUNNING, item.batch_id, item.position, PENDING)).fetchone()
                if row is not None:
                    started.append(replace(item, params=row[0]))
        return started

    def release(self, item: Item) -> None:
        """A running item goes back to pending (the server could not take it now)."""
        with self._tx() as db:
            db.execute("UPDATE items SET state = ? WHERE batch_id = ? AND position = ? AND "
                       "state = ?", (PENDING, item.batch_id, item.position, RUNNING))

    def finish(self, item: Item, state: str, result: dict[str, Any]) -> None:
        """Record an item's result, once: an item that already ended (canceled or expired
        meanwhile) keeps its first."""
        text = json.dumps(result)
        name = None
        if self._files is not None and len(text) > self.spill_bytes:
            name = f"{item.batch_id}-{item.position}.json"
            self._write_file(name, text)
            text = None
        with self._tx() as db:
            db.execute("UPDATE items SET state = ?, result = ?, result_file = ? WHERE "
                       "batch_id = ? AND position = ? AND state = ?",
                       (state, text, name, item.batch_id, item.position, RUNNING))
        self.end_finished()

    def results(self, batch_id: str, chunk: int = 64) -> Iterator[tuple[str, str]]:
        """``(custom_id, result JSON)`` of every item, in submission order, read a chunk
        at a time (never the whole batch in memory)."""
        position = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT position, custom_id, result, result_file FROM items WHERE "
                    "batch_id = ? AND position > ? ORDER BY position LIMIT ?",
                    (batch_id, position, chunk)).fetchall()
            if not rows:
                return
            for position, custom_id, result, name in rows:
                yield custom_id, result if name is None else (self._read_file(name) or "null")

    def counts(self) -> dict[str, int]:
        """Items per state, all batches together (for /health and /metrics)."""
        with self._lock:
            found = dict(self._db.execute("SELECT state, COUNT(*) FROM items GROUP BY state"))
        return {state: found.get(state, 0) for state in (PENDING, RUNNING, *DONE)}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- helpers -----------------------------------------------------------------------

    def _batch(self, row: tuple) -> Batch:
        counts = dict(self._db.execute("SELECT state, COUNT(*) FROM items WHERE batch_id = ? "
                                       "GROUP BY state", (row[0],)))
        return Batch(*row, counts={s: counts.get(s, 0) for s in (PENDING, RUNNING, *DONE)})

    def _tx(self):
        return _Transaction(self._db, self._lock)

    def _write_file(self, name: str, text: str) -> None:
        """Write, sync, then rename: the file is whole or absent."""
        self._files.mkdir(exist_ok=True)
        part = self._files / (name + ".part")
        with open(part, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, self._files / name)

    def _read_file(self, name: str) -> str | None:
        """The result in ``name``, or None if it is missing or torn."""
        try:
            text = (self._files / name).read_text(encoding="utf-8")
            json.loads(text)
            return text
        except (OSError, ValueError, TypeError):
            return None

    def _remove_file(self, name: str) -> None:
        if self._files is not None:
            (self._files / name).unlink(missing_ok=True)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception) under the lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self._db, self._lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, kind, value, traceback) -> None:
        try:
            self._db.execute("ROLLBACK" if kind else "COMMIT")
        finally:
            self._lock.release()
