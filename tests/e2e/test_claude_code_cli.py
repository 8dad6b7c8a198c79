"""The Claude Code CLI itself against ``preheat serve``.

Installed from npm (a pinned version, once, into the test cache); skipped where there is
no ``npm``. With ``--bare`` and two tools its prompt fits the embedded model; the server
samples greedily by default (``--default-temperature 0``: Claude Code sets no temperature)
and has a short window, so a reply is bounded. Its full default prompt (~20k tokens, 24
tools) needs a longer window: a random-weight model from ``bench/random_model.py`` with a
32k window that ends every reply at once (the reply is noise anyway; the prompt is real).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import start_server

CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.197"
RANDOM_MODEL = Path(__file__).parents[2] / "bench" / "random_model.py"


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


def run_claude(claude: Path, base_url: str, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANTHROPIC_BASE_URL": base_url,
           "ANTHROPIC_API_KEY": "preheat-test", "DISABLE_TELEMETRY": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "HOME": str(home)}
    return subprocess.run([str(claude), "-p", "What color is the sky? One word.", *args],
                          cwd=home, env=env, capture_output=True, text=True, timeout=300)


def messages_lines(log: Path) -> list[str]:
    """The access-log lines of ``/v1/messages`` requests, in order."""
    return [line for line in log.read_text().splitlines()
            if "endpoint=/v1/messages " in line and "preheat.access" in line]


def field(line: str, name: str) -> int:
    return int(re.search(rf" {name}=(\d+)", line).group(1))


def test_claude_code_print_mode_completes(claude, greedy_server, tmp_path):
    done = run_claude(claude, greedy_server.base_url, tmp_path, "--bare", "--system-prompt",
                      "Answer with one word.", "--tools", "Read,Bash")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.strip() and "API Error" not in output
    answered = messages_lines(greedy_server.log)
    assert answered and all(" status=200 " in line for line in answered), "\n".join(answered)


@pytest.fixture(scope="module")
def long_context_server(server_logs, tmp_path_factory):
    model = tmp_path_factory.mktemp("random-32k") / "model"
    subprocess.run([sys.executable, str(RANDOM_MODEL), str(model), "--shape", "tiny",
                    "--context", "32768", "--eos-first"], check=True, capture_output=True)
    srv = start_server(server_logs, "claude-code-32k",
                       ["--model", str(model), "--kv-cache-tokens", "65536"])
    yield srv
    srv.stop()


def test_claude_codes_full_default_prompt_is_read_from_the_cache_the_second_time(
        claude, long_context_server, tmp_path):
    runs = []
    for _ in range(2):
        before = len(messages_lines(long_context_server.log))
        done = run_claude(claude, long_context_server.base_url, tmp_path)
        assert done.returncode == 0 and "API Error" not in done.stdout + done.stderr, \
            done.stdout + done.stderr
        runs.append(messages_lines(long_context_server.log)[before:])
    lines = runs[0] + runs[1]
    assert all(" status=200 " in line for line in lines), "\n".join(lines)
    first, second = runs[0][0], runs[1][0]
    assert field(first, "prompt_tokens") > 15_000  # the whole default prompt: 24 tools
    assert field(first, "cache_write_tokens") > 0
    assert field(second, "cache_read_tokens") >= 0.8 * field(second, "prompt_tokens"), second
