"""The Claude Code CLI itself against ``preheat serve`` on the embedded model.

Installed from npm (a pinned version, once, into the test cache); skipped where there is
no ``npm``. The server samples greedily by default (``--default-temperature 0``: Claude
Code sets no temperature) and has a short window, so a reply is bounded.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from e2e_helpers import start_server

CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.197"


@pytest.fixture(scope="module")
def claude(tmp_path_factory) -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    prefix = cache / "preheat-tests" / CLAUDE_CODE.replace("/", "+")
    binary = prefix / "node_modules" / ".bin" / "claude"
    if not binary.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix),
                        CLAUDE_CODE], check=True, capture_output=True, timeout=600)
    return binary


@pytest.fixture(scope="module")
def greedy_server(server_logs):
    srv = start_server(server_logs, "claude-code-cli",
                       ["--default-temperature", "0", "--context-window", "2048"])
    yield srv
    srv.stop()


def test_claude_code_print_mode_completes(claude, greedy_server, tmp_path):
    env = {**os.environ, "ANTHROPIC_BASE_URL": greedy_server.base_url,
           "ANTHROPIC_API_KEY": "preheat-test", "DISABLE_TELEMETRY": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "HOME": str(tmp_path)}
    done = subprocess.run(
        [str(claude), "-p", "What color is the sky? One word.", "--bare",
         "--system-prompt", "Answer with one word.", "--tools", "Read,Bash"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.strip() and "API Error" not in output
    log = greedy_server.log.read_text()
    answered = [line for line in log.splitlines()
                if "endpoint=/v1/messages " in line and "preheat.access" in line]
    assert answered and all(" status=200 " in line for line in answered), "\n".join(answered)
