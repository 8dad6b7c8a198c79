"""Shared by the end-to-end tests: starting servers, their settings, unique prompts, usage sums."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

KEY_A = "e2e-key-a"
KEY_B = "e2e-key-b"
ALIAS = "smol-alias"
MIN_CACHE_TOKENS = 128
CONTEXT_WINDOW = 1024
MAX_REQUEST_BYTES = 1_000_000
STARTUP_TIMEOUT_S = 300
GPL3 = Path("/usr/share/common-licenses/GPL-3")
# The 2.x SDK has no temperature keyword: clients send it in extra_body.
GREEDY = {"temperature": 0}

# The framework clients' servers (test_clients_python.py, test_clients_js.py): greedy by
# default (not every client sends a temperature), a key the clients must send
CLIENTS_KEY = "clients-key"
CLIENTS_SERVER_ARGS = ["--api-key", CLIENTS_KEY, "--default-temperature", "0",
                       "--context-window", "2048", "--min-cache-tokens", "128"]

MAIN_SERVER_ARGS = [
    "--api-key", KEY_A, "--api-key", KEY_B, "--alias", ALIAS,
    "--min-cache-tokens", str(MIN_CACHE_TOKENS), "--context-window", str(CONTEXT_WINDOW),
    "--kv-cache-tokens", "24576", "--max-request-bytes", str(MAX_REQUEST_BYTES),
    # long enough that no test's entry expires while it runs (test_ttl.py checks expiry), short
    # enough that the session's entries don't fill the pinnable share of the pool
    "--ttl-5m-seconds", "120", "--ttl-1h-seconds", "240",
]


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def health(self) -> dict:
        return httpx.get(f"{self.base_url}/health", timeout=10).json()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _preheat_command() -> list[str]:
    script = Path(sys.executable).with_name("preheat")
    return [str(script)] if script.exists() else [sys.executable, "-m", "preheat.cli"]


def start_server(log_dir: Path, name: str, args: list[str]) -> Server:
    """Start ``preheat serve`` on a free loopback port and wait until /health answers.

    Unless ``args`` name them, the server's disk tier is a fresh folder of its own and its
    stored responses and batches fresh databases.
    """
    port = _free_port()
    log = log_dir / f"{name}.log"
    if "--kv-disk-dir" not in args:
        args = [*args, "--kv-disk-dir", str(log_dir / f"{name}-kv")]
    if "--responses-db" not in args:
        args = [*args, "--responses-db", str(log_dir / f"{name}-responses.sqlite3")]
    if "--batches-db" not in args:
        args = [*args, "--batches-db", str(log_dir / f"{name}-batches.sqlite3")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREHEAT_") or k == "PREHEAT_CACHE_DIR"}
    with log.open("wb") as out:
        process = subprocess.Popen([*_preheat_command(), "serve", "--port", str(port), *args],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"preheat serve exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"preheat serve did not become healthy:\n{server.log_tail()}")


def document(words: int = 200) -> str:
    """Text no other request has sent: a nonce, then ``words`` words of the GPL."""
    text = " ".join(GPL3.read_text().split()[:words])
    return f"Reference {uuid.uuid4().hex}.\n{text}"


def cached_system(text: str, ttl: str = "5m") -> list[dict]:
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral", "ttl": ttl}}]


def total_input(usage) -> int:
    return usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
