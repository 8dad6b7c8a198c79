"""`preheat generate` as a real process on the embedded model."""
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_generate_streams_a_greedy_reply():
    cmd = [sys.executable, "-m", "preheat.cli", "generate", "Name three colors.",
           "--max-tokens", "24", "--temperature", "0", "--kv-cache-tokens", "1024"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.stdout == first.stdout  # greedy: the same reply every time
