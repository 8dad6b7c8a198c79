"""A server process for a benchmark: started on a free loopback port, ready once its
``/health`` answers 200, stopped when the benchmark is done. Shared by ``preheat bench``
and the scripts in ``bench/``."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

STARTUP_SECONDS = 900  # a first start compiles preheat's kernels; llama-server loads fast


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(command: list[str], port: int, log: Path | None = None) -> Iterator[str]:
    """Run ``command`` (listening on ``port``; output to ``log`` or inherited) and yield its
    base URL once healthy; raises SystemExit with the log's tail if it never gets there."""
    out = log.open("wb") if log else None
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT if out else None)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:] if log else ""
                raise SystemExit(f"{command[0]} did not come up (exit {process.poll()})\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if out:
            out.close()


def preheat_server(extra_args: list[str], log: Path | None = None):
    """``preheat serve`` (this Python's) on a free loopback port, stopped on exit."""
    port = free_port()
    return running_server([sys.executable, "-m", "preheat.cli", "serve", "--port", str(port),
                           "--log-level", "warning", *extra_args], port, log)
