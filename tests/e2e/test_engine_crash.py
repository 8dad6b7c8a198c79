"""``preheat serve`` runs its engine core in a child process: what a client sees when it dies."""
from __future__ import annotations

import os
import signal
import subprocess

import httpx
from e2e_helpers import start_server


def engine_pid(server_pid: int) -> int:
    """The server's engine child (multiprocessing also starts a resource tracker)."""
    children = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(server_pid)],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    engines = [int(line.split()[0]) for line in children if "spawn_main" in line]
    assert len(engines) == 1, children
    return engines[0]


def test_a_dead_engine_ends_streams_and_stops_the_server(server_logs):
    server = start_server(server_logs, "engine-dies", ["--kv-cache-tokens", "4096"])
    try:
        body = {"model": "claude-e2e", "max_tokens": 4000, "stream": True,
                "messages": [{"role": "user", "content": "Tell me a very long story."}]}
        events = []
        with httpx.stream("POST", f"{server.base_url}/v1/messages", json=body,
                          headers={"x-api-key": "k"}, timeout=120) as response:
            for line in response.iter_lines():
                if not line.startswith("event: "):
                    continue
                events.append(line.removeprefix("event: "))
                if events.count("content_block_delta") == 3 and "killed" not in events:
                    os.kill(engine_pid(server.process.pid), signal.SIGKILL)
                    events.append("killed")
        assert events[:3] == ["message_start", "content_block_start", "content_block_delta"]
        assert "killed" in events and events[-1] == "error"
        assert server.process.wait(timeout=60) == 1
        assert "engine process exited unexpectedly" in server.log.read_text()
    finally:
        server.stop()
