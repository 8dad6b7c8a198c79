"""Operating ``preheat serve``: /metrics, the access log, and a clean stop on SIGTERM/SIGINT.

Metrics and the access log are read from the shared server after real requests through
the SDK. The shutdown tests start servers of their own and signal them mid-stream.
"""
from __future__ import annotations

import json
import re
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from e2e_helpers import GREEDY, KEY_A, Server, cached_system, document, start_server
from prometheus_client.parser import text_string_to_metric_families

from preheat.server.auth import namespace_for
from preheat.server.request_record import tenant_hash

STORY = [{"role": "user", "content": "Tell me a very long story."}]  # greedy: runs to max_tokens


def scrape(server: Server) -> list:
    response = httpx.get(f"{server.base_url}/metrics", timeout=60)  # no key: open like /health
    assert response.status_code == 200
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def value(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def delta(before: list, after: list, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def access_line(server: Server, request_id: str, timeout: float = 30.0) -> dict[str, str]:
    """The server's access-log line for ``request_id``, parsed (waits for it to be written)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in server.log.read_text(errors="replace").splitlines():
            if " preheat.access: " in line and f"request_id={request_id} " in line:
                text = line.split(" preheat.access: ", 1)[1]
                return {k: json.loads(v) if v.startswith('"') else v
                        for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', text)}
        if time.monotonic() > deadline:
            raise AssertionError(f"no access-log line for {request_id}:\n{server.log_tail()}")
        time.sleep(0.2)


def test_metrics_move_with_real_requests(server, client):
    before = scrape(server)
    system = cached_system(document())
    replies = [client.messages.create(model="claude-ops", max_tokens=8, system=system,
                                      messages=STORY, extra_body=GREEDY) for _ in range(2)]
    after = scrape(server)
    cold, hit = (r.usage for r in replies)
    assert cold.cache_creation_input_tokens > 0 and hit.cache_read_input_tokens > 0
    tokens = "preheat_prompt_tokens_total"
    assert delta(before, after, tokens, kind="cache_read") == hit.cache_read_input_tokens
    assert delta(before, after, tokens, kind="cache_write") == \
        cold.cache_creation_input_tokens + hit.cache_creation_input_tokens
    assert delta(before, after, tokens, kind="input") == cold.input_tokens + hit.input_tokens
    assert delta(before, after, "preheat_output_tokens_total") == 16
    assert delta(before, after, "preheat_requests_total", endpoint="/v1/messages", status="200") == 2
    assert delta(before, after, "preheat_time_to_first_token_seconds_count") == 2
    assert delta(before, after, "preheat_request_duration_seconds_count") == 2
    assert 0 < value(after, "preheat_prompt_cache_hit_ratio") < 1
    health = server.health()
    assert value(after, "preheat_kv_pool_blocks") == health["total_blocks"]
    assert value(after, "preheat_kv_blocks_pinned") > 0  # the entry this test wrote, at least
    assert value(after, "preheat_engine_up") == 1


def test_each_request_has_an_access_log_line(server, client, http):
    reply = client.messages.create(model="claude-ops", max_tokens=5, messages=STORY,
                                   extra_body=GREEDY)
    line = access_line(server, reply._request_id)
    assert line["tenant"] == tenant_hash(namespace_for(KEY_A)) and KEY_A not in str(line)
    assert (line["endpoint"], line["model"], line["status"], line["stop_reason"]) == \
        ("/v1/messages", "claude-ops", "200", "max_tokens")
    assert int(line["prompt_tokens"]) == reply.usage.input_tokens
    assert (line["cache_read_tokens"], line["cache_write_tokens"]) == ("0", "0")
    assert int(line["output_tokens"]) == 5
    assert 0 < float(line["ttft_ms"]) <= float(line["total_ms"])

    bad = http.post("/v1/messages", json={"model": "claude-ops", "messages": STORY})
    assert access_line(server, bad.headers["request-id"])["status"] == "400"

    body = {"model": "claude-ops", "max_tokens": 900, "stream": True, "messages": STORY}
    with http.stream("POST", "/v1/messages", json=body) as response:
        request_id = response.headers["request-id"]
        for text in response.iter_lines():
            if text.startswith("event: content_block_delta"):
                break  # hang up mid-stream
    hung_up = access_line(server, request_id)
    assert (hung_up["status"], hung_up["stream"], hung_up["stop_reason"]) == ("499", "true", "-")


# ---- shutdown ----------------------------------------------------------------------------


def stream_events(base_url: str, max_tokens: int, started: Future) -> list[str]:
    """A raw SSE stream's event names, plus the error's type; ``started`` resolves at the
    first text delta. A connection the server cut ends the list with ``cut``."""
    body = {"model": "claude-ops", "max_tokens": max_tokens, "stream": True, "messages": STORY,
            **GREEDY}
    names: list[str] = []
    try:
        with httpx.stream("POST", f"{base_url}/v1/messages", json=body, timeout=600) as response:
            for line in response.iter_lines():
                if line.startswith("event: "):
                    names.append(line.removeprefix("event: "))
                    if names[-1] == "content_block_delta" and not started.done():
                        started.set_result(True)
                elif line.startswith("data: ") and names[-1] == "error":
                    names.append(json.loads(line.removeprefix("data: "))["error"]["type"])
    except httpx.HTTPError:
        names.append("cut")
    finally:
        if not started.done():
            started.set_result(False)
    return [n for n in names if n != "ping"]


def signal_mid_streams(server: Server, max_tokens: int, sig: int = signal.SIGTERM):
    """Two streams in flight, then ``sig``; returns the streams' futures once the server is
    draining (its /health says so), while they may still run."""
    pool = ThreadPoolExecutor(2)
    started = [Future(), Future()]
    streams = [pool.submit(stream_events, server.base_url, max_tokens, s) for s in started]
    assert all(s.result(timeout=300) for s in started)
    server.process.send_signal(sig)
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.base_url}/health", timeout=30).status_code != 503:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.05)
    pool.shutdown(wait=False)
    return streams


def assert_new_requests_are_refused(server: Server) -> None:
    response = httpx.post(f"{server.base_url}/v1/messages", timeout=60,
                          json={"model": "claude-ops", "max_tokens": 5, "messages": STORY})
    assert response.status_code == 529
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["error"]["type"] == "overloaded_error"
    assert "shutting down" in response.json()["error"]["message"]


@pytest.fixture
def own_server(server_logs):
    started: list[Server] = []

    def start(name: str, grace: float) -> Server:
        started.append(start_server(server_logs, name, [
            "--shutdown-grace-seconds", str(grace), "--kv-cache-tokens", "8192"]))
        return started[-1]

    yield start
    for srv in started:
        if srv.process.poll() is None:
            srv.stop()


def test_sigterm_lets_running_streams_finish_within_the_grace_period(own_server):
    server = own_server("grace-long", 600)
    streams = signal_mid_streams(server, max_tokens=150)
    assert_new_requests_are_refused(server)
    for stream in streams:
        events = stream.result(timeout=600)
        assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"], events
    assert server.process.wait(timeout=120) == 0, server.log_tail()
    assert "shutting down" in server.log.read_text()


def test_sigterm_ends_streams_still_running_after_the_grace_period(own_server):
    server = own_server("grace-short", 3)
    streams = signal_mid_streams(server, max_tokens=4000)
    assert_new_requests_are_refused(server)
    for stream in streams:
        events = stream.result(timeout=300)
        assert events[0] == "message_start" and events[-2:] == ["error", "overloaded_error"], events
    assert server.process.wait(timeout=120) == 0, server.log_tail()
    log = server.log.read_text()
    assert "grace period over: ended 2 requests" in log
    assert log.count("status=529") == 3  # two ended streams and the refused request


def test_a_second_signal_exits_at_once(own_server):
    server = own_server("second-signal", 600)
    streams = signal_mid_streams(server, max_tokens=4000, sig=signal.SIGINT)
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=60) == 1, server.log_tail()
    for stream in streams:
        assert "message_stop" not in stream.result(timeout=60)
    assert "SIGINT again: exiting now" in server.log.read_text()


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc")
def test_the_api_process_never_loads_torch(server, client):
    """The HTTP side renders prompts and events only: torch lives in the engine process."""
    client.messages.create(model="claude-x", max_tokens=4, messages=STORY, extra_body=GREEDY)
    assert "libtorch" not in _maps(server.process.pid)
    assert any("libtorch" in _maps(child) for child in _children(server.process.pid))
