"""``preheat serve`` runs its engine core in a child process: what a client sees when it dies
(by default a new core takes its place; ``--no-engine-restart`` exits for a supervisor)."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
from e2e_helpers import start_server


def engine_pid(server_pid: int) -> int:
    """The server's engine child (multiprocessing also starts a resource tracker)."""
    children = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(server_pid)],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    engines = [int(line.split()[0]) for line in children if "spawn_main" in line]
    assert len(engines) == 1, children
    return engines[0]


def stream_until_killed(server) -> list[str]:
    """A long streamed reply whose engine is killed after its third text delta: its events."""
    body = {"model": "claude-e2e", "max_tokens": 4000, "stream": True,
            "messages": [{"role": "user", "content": "Tell me a very long story."}]}
    events = []
    with httpx.stream("POST", f"{server.base_url}/v1/messages", json=body,
                      headers={"x-api-key": "k"}, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and events and events[-1] == "error":
                events.append(line)
            if not line.startswith("event: "):
                continue
            events.append(line.removeprefix("event: "))
            if events.count("content_block_delta") == 3 and "killed" not in events:
                os.kill(engine_pid(server.process.pid), signal.SIGKILL)
                events.append("killed")
    return events


def test_a_dead_engine_is_restarted_in_place(server_logs):
    server = start_server(server_logs, "engine-restarts", ["--kv-cache-tokens", "4096"])
    try:
        events = stream_until_killed(server)
        assert events[:3] == ["message_start", "content_block_start", "content_block_delta"]
        assert "killed" in events and events[-2] == "error" and "restarting" in events[-1]
        statuses = set()
        for _ in range(600):  # the new core loads the model (seconds)
            health = httpx.get(f"{server.base_url}/health", timeout=10)
            statuses.add((health.status_code, health.json()["status"]))
            if health.status_code == 200:
                break
            time.sleep(0.1)
        assert (503, "restarting") in statuses and health.json()["engine_restarts"] == 1
        reply = httpx.post(f"{server.base_url}/v1/messages", headers={"x-api-key": "k"}, timeout=120,
                           json={"model": "claude-e2e", "max_tokens": 5,
                                 "messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 200 and reply.json()["stop_reason"] in ("max_tokens", "end_turn")
        assert server.process.poll() is None
        assert "the engine process is back" in server.log.read_text()
    finally:
        server.stop()


def test_without_restart_a_dead_engine_stops_the_server(server_logs):
    server = start_server(server_logs, "engine-dies", ["--kv-cache-tokens", "4096",
                                                        "--no-engine-restart"])
    try:
        events = stream_until_killed(server)
        assert events[:3] == ["message_start", "content_block_start", "content_block_delta"]
        assert "killed" in events and events[-2] == "error"
        assert server.process.wait(timeout=60) == 1
        assert "engine process exited unexpectedly" in server.log.read_text()
    finally:
        server.stop()
