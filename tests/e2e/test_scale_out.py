"""Scale-out on Ray Serve: ``preheat serve --replicas 2`` on a local Ray instance, through
the real SDK. Skipped without the ``ray`` extra (CI installs it)."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import anthropic
import httpx
import pytest
from e2e_helpers import cached_system, document, start_server

pytest.importorskip("ray.serve", reason="the ray extra (pip install 'preheat[ray]')")

MODEL = "claude-sonnet-4-5"  # any claude-* id is served by the embedded model
THREADS = "message-threads-2026-08-12"
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def scaled(server_logs):
    srv = start_server(server_logs, "scale-out", [
        "--replicas", "2", "--num-threads", "1", "--kv-cache-tokens", "4096",
        "--min-cache-tokens", "128"])
    deadline = time.monotonic() + 240  # /health answers once one replica is up
    while len(replicas(srv)) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    yield srv
    srv.stop()


def sdk(server, key: str = "tenant-a") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)


def replica_of(raw) -> str:
    return raw.headers["preheat-replica"]


def replicas(server) -> dict[str, dict]:
    return {r["id"]: r for r in server.health()["replicas"]}


def test_health_lists_both_replicas_with_their_engine_processes(scaled):
    listed = replicas(scaled)
    assert len(listed) == 2
    pids = {r["pid"] for r in listed.values()}
    assert len(pids) == 2 and all(os.path.exists(f"/proc/{pid}") for pid in pids)
    assert all(r["free_blocks"] > 0 and r["running"] == 0 for r in listed.values())


def test_each_tenant_reads_its_prefix_on_the_replica_that_wrote_it(scaled):
    tenants = [f"tenant-{i}" for i in range(4)]
    prefixes = {tenant: cached_system(document(150)) for tenant in tenants}
    home = {}
    for tenant in tenants:
        raw = sdk(scaled, tenant).messages.with_raw_response.create(
            model=MODEL, max_tokens=4, system=prefixes[tenant], extra_body=GREEDY,
            messages=[{"role": "user", "content": "First question."}])
        assert raw.parse().usage.cache_creation_input_tokens > 128
        home[tenant] = replica_of(raw)
    for round_ in range(3):
        for tenant in reversed(tenants):
            raw = sdk(scaled, tenant).messages.with_raw_response.create(
                model=MODEL, max_tokens=4, system=prefixes[tenant], extra_body=GREEDY,
                messages=[{"role": "user", "content": f"Question {round_} of {tenant}."}])
            usage = raw.parse().usage
            assert replica_of(raw) == home[tenant]
            assert usage.cache_read_input_tokens > 128 and usage.cache_creation_input_tokens == 0
    metrics = httpx.get(f"{scaled.base_url}/metrics").text
    assert 'preheat_routing_decisions_total{reason="match"' in metrics


async def test_unrelated_concurrent_requests_spread_over_both_replicas(scaled):
    client = anthropic.AsyncAnthropic(base_url=scaled.base_url, api_key="spread",
                                      max_retries=0, timeout=120)

    async def one(i: int) -> str:
        raw = await client.messages.with_raw_response.create(
            model=MODEL, max_tokens=24, extra_body=GREEDY,
            messages=[{"role": "user", "content": f"Tell me fact number {i} about otters."}])
        assert (await raw.parse()).content[0].text
        return replica_of(raw)

    served = await asyncio.gather(*(one(i) for i in range(8)))
    assert set(served) == set(replicas(scaled))


def test_a_streamed_reply_through_the_router(scaled):
    client = sdk(scaled, "streamer")
    with client.messages.stream(model=MODEL, max_tokens=24, extra_body=GREEDY,
                                messages=[{"role": "user", "content": "Say hello."}]) as stream:
        assert stream.response.headers["preheat-replica"] in replicas(scaled)
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and final.content[0].text
    whole = client.messages.create(model=MODEL, max_tokens=24, extra_body=GREEDY,
                                   messages=[{"role": "user", "content": "Say hello."}])
    assert whole.content[0].text == final.content[0].text  # either replica, the same tokens


def test_a_thread_continues_on_the_replica_that_holds_it(scaled):
    def post(body: dict) -> httpx.Response:
        response = httpx.post(f"{scaled.base_url}/v1/messages?beta=true", timeout=120, json={
            "model": MODEL, "max_tokens": 16, "temperature": 0, **body},
            headers={"x-api-key": "threader", "anthropic-beta": THREADS})
        assert response.status_code == 200, response.text
        return response

    first = post({"thread": {"type": "create"}, "system": document(60),
                  "messages": [{"role": "user", "content": "Name a colour."}]})
    previous, home = first.json()["id"], first.headers["preheat-replica"]
    for question in ("Name a fruit of that colour.", "Name an animal."):
        cached = scaled.health()["prompt_tokens_cached"]
        turn = post({"thread": {"type": "continue", "previous_message_id": previous},
                     "messages": [{"role": "user", "content": question}]})
        assert turn.headers["preheat-replica"] == home
        # the held history was read from the cache (a thread's KV is held unreported, so
        # usage counts it as input): the engines' cached prompt tokens grew by about all of it
        history = turn.json()["usage"]["input_tokens"] - 32
        assert scaled.health()["prompt_tokens_cached"] - cached > history
        previous = turn.json()["id"]


def test_a_client_that_hangs_up_frees_its_request_on_the_replica(scaled):
    aborted = scaled.health()["aborted"]
    client = sdk(scaled, "quitter")
    with client.messages.stream(model=MODEL, max_tokens=1500, messages=[{
            "role": "user", "content": "Write a very long story about a clockmaker."}]) as stream:
        for count, _ in enumerate(stream):
            if count == 5:
                break  # closes the connection
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = scaled.health()
        if health["aborted"] > aborted and health["running"] == 0:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the replica kept generating for a client that left: {health}")


def test_the_application_builds_from_serve_run_arguments():
    from ray.serve import Application

    from preheat.cli import scale_from_options
    app = scale_from_options({"replicas": "3", "num-threads": "1", "claude-aliases": "false",
                              "kv_cache_tokens": "2048"})
    assert isinstance(app, Application)


def test_a_replica_killed_mid_stream_fails_only_its_stream_and_comes_back(scaled):
    before = replicas(scaled)
    client = sdk(scaled, "victim")
    with client.messages.stream(model=MODEL, max_tokens=1500, messages=[{
            "role": "user", "content": "Write a very long story about a lighthouse keeper."}]
            ) as stream:
        victim = stream.response.headers["preheat-replica"]
        core = before[victim]["pid"]
        replica_process = _parent_of(core)
        with pytest.raises(anthropic.APIStatusError, match="replica"):
            for count, _ in enumerate(stream):
                if count == 10:
                    os.kill(replica_process, signal.SIGKILL)
    survivor = next(rid for rid in before if rid != victim)
    raw = sdk(scaled, "bystander").messages.with_raw_response.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Hello?"}])
    assert replica_of(raw) == survivor and raw.parse().content[0].text
    _wait_gone(core)  # the engine core went with its replica (Ray's subreaper)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        now = replicas(scaled)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(2)
    else:
        pytest.fail(f"the replica was not replaced: {now}")
    replacement = next(r for rid, r in now.items() if rid != survivor)
    # the replica Serve started in its place read the pinned prefixes of its disk tier
    assert replacement["pinned_entries"] == before[victim]["pinned_entries"]


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def _wait_gone(pid: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{pid}")
