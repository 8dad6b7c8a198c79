"""The Message Batches store: states, counts, pages, expiry, retention, and what a crash leaves."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from engine_driver import FakeClock
from preheat.server.batch_store import (CANCELED, CANCELING, ENDED, EXPIRED, IN_PROGRESS, PENDING,
                                        RUNNING, SUCCEEDED, BatchStore)

DAY = 86400.0


def requests(n: int) -> list[tuple[str, str, str | None]]:
    return [(f"q{i}", json.dumps({"i": i}), None) for i in range(n)]


def store_with(n: int, clock=None, **kwargs) -> tuple[BatchStore, str]:
    store = BatchStore(clock=clock or FakeClock(), **kwargs)
    store.create("b1", "key-a", requests(n), DAY)
    return store, "b1"


def succeed(store: BatchStore, items) -> None:
    for item in items:
        store.finish(item, SUCCEEDED, {"type": "succeeded", "message": {"n": item.position}})


def test_a_batch_runs_its_items_once_and_ends_when_none_is_left():
    store, batch = store_with(3)
    assert store.get("key-a", batch).counts[PENDING] == 3
    items = store.start(store.pending(1000))
    assert [i.custom_id for i in items] == ["q0", "q1", "q2"]
    assert store.start(items) == []  # running already: nobody starts them twice
    succeed(store, items[:2])
    assert store.get("key-a", batch).status == IN_PROGRESS
    succeed(store, items[2:])
    store.finish(items[0], SUCCEEDED, {"type": "succeeded", "message": {"n": "again"}})
    done = store.get("key-a", batch)
    assert done.status == ENDED and done.ended_at is not None
    assert done.counts[SUCCEEDED] == 3
    results = [(cid, json.loads(r)) for cid, r in store.results(batch, chunk=2)]
    assert results == [(f"q{i}", {"type": "succeeded", "message": {"n": i}}) for i in range(3)]


def test_another_key_never_sees_a_batch():
    store, batch = store_with(1)
    assert store.get("key-b", batch) is None
    assert store.cancel("key-b", batch) is None and not store.delete("key-b", batch)
    assert store.page("key-b", 10, None, None) == ([], False)
    assert store.get("key-a", batch) is not None


def test_cancel_ends_pending_items_at_once_and_the_batch_once_running_ones_end():
    store, batch = store_with(3)
    [running] = store.start(store.pending(1000)[:1])
    canceled = store.cancel("key-a", batch)
    assert canceled.status == CANCELING and canceled.cancel_initiated_at is not None
    assert canceled.counts[CANCELED] == 2 and canceled.counts[RUNNING] == 1
    assert store.pending(1000) == []
    store.finish(running, CANCELED, {"type": "canceled"})
    assert store.get("key-a", batch).status == ENDED


def test_expiry_ends_what_is_left_and_retention_deletes_ended_batches():
    clock = FakeClock()
    store, batch = store_with(3, clock)
    succeed(store, store.start(store.pending(1000)[:1]))
    store.start(store.pending(1000)[:1])
    clock.now += DAY
    assert store.expire() == [batch]
    expired = store.get("key-a", batch)
    assert expired.status == ENDED and expired.counts == {
        PENDING: 0, RUNNING: 0, SUCCEEDED: 1, "errored": 0, CANCELED: 0, EXPIRED: 2}
    assert [json.loads(r)["type"] for _, r in store.results(batch)] == [
        "succeeded", "expired", "expired"]
    clock.now += 10
    assert store.drop_ended_before(clock.now - 20) == 0  # not yet past retention
    assert store.drop_ended_before(clock.now) == 1 and store.get("key-a", batch) is None


def test_pages_go_newest_first_with_after_and_before():
    clock = FakeClock()
    store = BatchStore(clock=clock)
    for i in range(5):
        clock.now += 1
        store.create(f"b{i}", "k", requests(1), DAY)
    first, more = store.page("k", 2, None, None)
    assert [b.id for b in first] == ["b4", "b3"] and more
    rest, more = store.page("k", 2, "b3", None)
    assert [b.id for b in rest] == ["b2", "b1"] and more
    newer, more = store.page("k", 2, None, "b1")
    assert [b.id for b in newer] == ["b3", "b2"] and more


def test_a_restart_runs_interrupted_items_again_and_keeps_finished_ones(tmp_path):
    path = tmp_path / "batches.sqlite3"
    store = BatchStore(path, spill_bytes=64)
    store.create("b1", "k", requests(3), DAY)
    items = store.start(store.pending(1000))
    big = {"type": "succeeded", "message": {"text": "x" * 500}}  # spilled to a file
    store.finish(items[0], SUCCEEDED, big)
    store.finish(items[1], SUCCEEDED, {"type": "succeeded", "message": {}})
    store.close()  # items[2] was running when the process ended
    store = BatchStore(path, spill_bytes=64)
    assert [i.position for i in store.pending(1000)] == [2]
    assert json.loads(next(store.results("b1"))[1]) == big


def test_a_torn_result_file_makes_its_item_run_again(tmp_path):
    path = tmp_path / "batches.sqlite3"
    store = BatchStore(path, spill_bytes=8)
    store.create("b1", "k", requests(1), DAY)
    [item] = store.start(store.pending(1000))
    store.finish(item, SUCCEEDED, {"type": "succeeded", "message": {"text": "long enough"}})
    store.close()
    [spilled] = (tmp_path / "batches.results").iterdir()
    spilled.write_text(spilled.read_text()[:10])  # a crash mid-write of a copy
    store = BatchStore(path, spill_bytes=8)
    assert [i.position for i in store.pending(1000)] == [0]
    assert store.get("k", "b1").status == IN_PROGRESS


WRITER = r"""
import json, sys
from preheat.server.batch_store import BatchStore, SUCCEEDED
store = BatchStore(__import__("pathlib").Path(sys.argv[1]), spill_bytes=200)
print("ready", flush=True)
while True:
    items = store.start(store.pending(1))
    if not items:
        break
    store.finish(items[0], SUCCEEDED, {"type": "succeeded",
                                       "message": {"text": "y" * (items[0].position * 7)}})
"""


def test_a_writer_killed_mid_batch_leaves_every_item_whole_or_pending(tmp_path):
    path = tmp_path / "batches.sqlite3"
    BatchStore(path).create("b1", "k", requests(400), DAY)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
    assert writer.stdout.readline().strip() == b"ready"
    time.sleep(0.5)  # some items done, one likely mid-transaction or mid-file
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    store = BatchStore(path, spill_bytes=200)
    batch = store.get("k", "b1")
    done = batch.counts[SUCCEEDED]
    assert done + batch.counts[PENDING] == 400 and batch.counts[RUNNING] == 0
    results = [json.loads(r) for _, r in store.results("b1") if r is not None]
    assert len(results) == done  # each finished item has its whole result, and only those
    for result in results:
        assert result["type"] == "succeeded"
