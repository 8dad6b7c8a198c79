"""Message Batches through the SDK's ``client.messages.batches`` against ``preheat serve``.

Items run on the same engine and cache as ``/v1/messages`` (the same greedy tokens and
exact usage; items that share a cached system prompt prefill it once), per API key, and
a server killed mid-batch resumes it after a restart with every item done exactly once.
"""
from __future__ import annotations

import os
import signal
import time

import anthropic
import httpx
import pytest
from e2e_helpers import ALIAS, KEY_A, MAIN_SERVER_ARGS, cached_system, document, start_server

GREEDY = {"temperature": 0}
POLL_S = 0.5
WAIT_S = 600  # the most a batch may take here; a hang fails the test, a slow run does not


def params(question: str, system=None, max_tokens: int = 12, **extra) -> dict:
    body = {"model": ALIAS, "max_tokens": max_tokens, **GREEDY, **extra,
            "messages": [{"role": "user", "content": question}]}
    if system is not None:
        body["system"] = system
    return body


def wait_ended(client: anthropic.Anthropic, batch_id: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        time.sleep(POLL_S)
    pytest.fail(f"batch {batch_id} did not end in {WAIT_S} s")


def results_of(client: anthropic.Anthropic, batch_id: str) -> dict:
    results = {}
    for line in client.messages.batches.results(batch_id):
        assert line.custom_id not in results  # each item once
        results[line.custom_id] = line.result
    return results


def test_a_batch_runs_its_items_as_messages_requests_sharing_their_cached_prefix(client, server):
    system = cached_system(document(300))
    questions = [f"Question {i}: what is this text about?" for i in range(6)]
    requests = [{"custom_id": f"q{i}", "params": params(q, system)} for i, q in enumerate(questions)]
    requests += [
        {"custom_id": "no-messages", "params": {"model": ALIAS, "max_tokens": 5, "messages": []}},
        {"custom_id": "streams", "params": params("Hi", stream=True)},
        {"custom_id": "no-model", "params": params("Hi", model="gpt-unknown")},
    ]
    batch = client.messages.batches.create(requests=requests)
    assert batch.id.startswith("msgbatch_") and batch.type == "message_batch"
    assert batch.processing_status == "in_progress" and batch.request_counts.processing == 9
    assert (batch.expires_at - batch.created_at).total_seconds() == pytest.approx(86400, abs=1)
    assert batch.results_url is None
    ended = wait_ended(client, batch.id)
    assert ended.request_counts.succeeded == 6 and ended.request_counts.errored == 3
    assert ended.ended_at is not None and ended.results_url.endswith(f"/{batch.id}/results")
    results = results_of(client, batch.id)
    assert set(results) == {r["custom_id"] for r in requests}
    for name, kind in (("no-messages", "invalid_request_error"),
                       ("streams", "invalid_request_error"), ("no-model", "not_found_error")):
        assert results[name].type == "errored" and results[name].error.error.type == kind
    assert "stream" in results["streams"].error.error.message
    usages = [results[f"q{i}"].message.usage for i in range(6)]
    written = [u.cache_creation_input_tokens for u in usages]
    assert sorted(written)[:-1] == [0] * 5 and max(written) > 0  # one item wrote the prefix
    assert [u.cache_read_input_tokens for u in usages].count(max(written)) == 5  # the rest read it
    # the same request through /v1/messages: the same greedy tokens
    direct_params = params(questions[3], system)
    del direct_params["temperature"]  # the 2.x SDK takes it in extra_body only
    direct = client.messages.create(**direct_params, extra_body=GREEDY)
    assert results["q3"].message.content[0].text == direct.content[0].text
    assert direct.usage.cache_read_input_tokens == max(written)
    assert server.health()["batch_items"]["pending"] == 0
    assert "preheat_batch_items{" in httpx.get(f"{server.base_url}/metrics").text


def test_retrieve_list_and_delete(client):
    long = client.messages.batches.create(requests=[
        {"custom_id": "long", "params": params("Count to a thousand.", max_tokens=400)}])
    with pytest.raises(anthropic.BadRequestError, match="still processing"):
        client.messages.batches.delete(long.id)
    client.messages.batches.cancel(long.id)
    wait_ended(client, long.id)
    ids = [client.messages.batches.create(requests=[
        {"custom_id": "only", "params": params(f"Say {i}.", max_tokens=2)}]).id for i in range(3)]
    for batch_id in ids:
        wait_ended(client, batch_id)
    first = client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    assert first.first_id == ids[-1] and first.last_id == ids[1]
    pages = [b.id for b in client.messages.batches.list(limit=2)]  # the SDK follows after_id
    assert pages[:3] == ids[::-1]
    deleted = client.messages.batches.delete(ids[0])
    assert deleted.id == ids[0] and deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(ids[0])
    assert ids[0] not in [b.id for b in client.messages.batches.list(limit=100)]


def test_another_key_never_sees_a_batch(client, client_b):
    batch = client.messages.batches.create(requests=[
        {"custom_id": "a", "params": params("Hi", max_tokens=2)}])
    for call in (client_b.messages.batches.retrieve, client_b.messages.batches.cancel,
                 client_b.messages.batches.delete):
        with pytest.raises(anthropic.NotFoundError):
            call(batch.id)
    assert batch.id not in [b.id for b in client_b.messages.batches.list(limit=100)]
    wait_ended(client, batch.id)
    with pytest.raises(anthropic.NotFoundError):
        client_b.get(f"/v1/messages/batches/{batch.id}/results", cast_to=httpx.Response)


@pytest.mark.parametrize(("requests", "expected"), [
    ([], "requests: List should have at least 1 item"),
    ([{"custom_id": "a", "params": {}}, {"custom_id": "a", "params": {}}],
     "custom_id 'a' is used by more than one request"),
    ([{"custom_id": "has space", "params": {}}], "requests.0.custom_id"),
    ([{"custom_id": "x" * 65, "params": {}}], "requests.0.custom_id"),
    ([{"custom_id": "a"}], "requests.0.params: Field required"),
    ([{"custom_id": "a", "params": {}, "extra": 1}], "requests.0.extra"),
])
def test_a_bad_envelope_is_a_400_at_once(client, requests, expected):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.batches.create(requests=requests)
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert expected in info.value.body["error"]["message"]


def test_cancel_cancels_pending_items_at_once_and_ends_the_batch(client):
    requests = [{"custom_id": f"c{i}", "params": params(f"Count to {i + 50}.", max_tokens=200)}
                for i in range(40)]
    batch = client.messages.batches.create(requests=requests)
    canceled = client.messages.batches.cancel(batch.id)
    assert canceled.processing_status in ("canceling", "ended")
    assert canceled.cancel_initiated_at is not None
    ended = wait_ended(client, batch.id)
    counts = ended.request_counts
    assert counts.canceled >= 40 - 16  # at most the runner's concurrency had started
    assert counts.canceled + counts.succeeded == 40 and counts.processing == 0
    kinds = {r.type for r in results_of(client, batch.id).values()}
    assert "canceled" in kinds and kinds <= {"canceled", "succeeded"}
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.cancel("msgbatch_unknown")


def test_a_server_killed_mid_batch_resumes_it_and_does_every_item_once(server_logs, tmp_path):
    db = tmp_path / "batches.sqlite3"
    args = [*MAIN_SERVER_ARGS, "--batches-db", str(db), "--batch-concurrency", "2"]
    first = start_server(server_logs, "batches-before-kill", args)
    client = anthropic.Anthropic(base_url=first.base_url, api_key=KEY_A, max_retries=0)
    requests = [{"custom_id": f"k{i}", "params": params(f"Name a colour, {i}.", max_tokens=24)}
                for i in range(12)]
    batch = client.messages.batches.create(requests=requests)
    deadline = time.monotonic() + WAIT_S
    while client.messages.batches.retrieve(batch.id).request_counts.succeeded < 3:
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.2)
    os.kill(first.process.pid, signal.SIGKILL)  # mid-batch: items in flight, others pending
    first.process.wait()
    second = start_server(server_logs, "batches-after-kill", args)
    try:
        client = anthropic.Anthropic(base_url=second.base_url, api_key=KEY_A, max_retries=0)
        ended = wait_ended(client, batch.id)
        assert ended.request_counts.succeeded == 12
        results = results_of(client, batch.id)
        assert sorted(results) == sorted(r["custom_id"] for r in requests)
        assert all(r.type == "succeeded" and r.message.content for r in results.values())
    finally:
        second.stop()
