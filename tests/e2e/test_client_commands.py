"""`preheat chat` and `preheat bench` as real processes, against the shared server (the
main one: --min-cache-tokens 128, --context-window 1024) and, once, a server of its own."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import KEY_A, document

FOOTER = re.compile(r"^in (\d+) \| cache read (\d+) \| cache write (\d+) \| out (\d+) \| "
                    r"(\d+)% cached \| TTFT [\d.]+ s \| (?:[\d.]+|-) tok/s$", re.MULTILINE)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def preheat(*args: str) -> list[str]:
    return [sys.executable, "-m", "preheat.cli", *args]


def chat_command(server, *args: str) -> list[str]:
    return preheat("chat", "--base-url", server.base_url, "--api-key", KEY_A,
                   "--temperature", "0", *args)


def chat(server, stdin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(chat_command(server, "--max-tokens", "16", *args), input=stdin,
                          capture_output=True, text=True, timeout=300)


def footers(stderr: str) -> list[dict[str, int]]:
    names = ("input", "read", "write", "output", "cached_percent")
    return [dict(zip(names, map(int, match))) for match in FOOTER.findall(stderr)]


# ---- preheat chat -----------------------------------------------------------------------

def test_chat_through_a_pipe_reads_its_cached_system_prompt(server, tmp_path):
    system = tmp_path / "system.txt"
    system.write_text(document(300))
    result = chat(server, "What is this text about?\nWho publishes it?\n",
                  "--system-file", str(system))
    assert result.returncode == 0, result.stderr
    first, second = footers(result.stderr)
    assert first["write"] > 0 and first["read"] == 0
    assert second["read"] >= first["write"] and second["cached_percent"] > 50
    assert first["output"] > 0 and second["output"] > 0
    assert result.stdout.strip() and "cache read" not in result.stdout  # replies only


@pytest.mark.parametrize("stdin", ["Say hello.\nquit\nNever asked.\n",
                                   "Say hello.\n\n  \nEXIT\nNever asked.\n",
                                   "Say hello."])  # the end of input, without a newline
def test_chat_leaves_on_quit_exit_or_the_end_of_input(server, stdin):
    result = chat(server, stdin)
    assert result.returncode == 0, result.stderr
    assert len(footers(result.stderr)) == 1


def test_chat_says_when_the_server_refuses(server):
    result = subprocess.run(preheat("chat", "--base-url", server.base_url, "--api-key", "wrong"),
                            input="Hello?\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "401" in result.stderr and not footers(result.stderr)


def keyboard_interrupts() -> None:
    """In the child: SIGINT as a terminal delivers it. A test run started in the background
    inherits it ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(server):
    process = subprocess.Popen(chat_command(server, "--max-tokens", "600"),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=keyboard_interrupts)
    process.stdin.write("Write a very long story about a lighthouse keeper and a storm.\n")
    process.stdin.flush()
    shown = process.stdout.read(1)  # the reply has begun
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate("Thanks. Say hello.\n", timeout=300)
    assert process.returncode == 0, stderr
    assert shown and "stopped" in stderr
    assert len(footers(stderr)) == 1  # the second turn's


# ---- preheat bench ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench_json(server, tmp_path_factory) -> tuple[dict, Path]:
    """One quick run against the shared server, with JSON and a plot."""
    plot = tmp_path_factory.mktemp("bench") / "bench.png"
    result = subprocess.run(preheat("bench", "--quick", "--json", "--plot", str(plot),
                                    "--base-url", server.base_url, "--api-key", KEY_A),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), plot  # stdout is the JSON alone


def sane_reply(reply: dict) -> None:
    assert 0 < reply["ttft_s"] <= reply["total_s"]
    assert reply["usage"]["prompt_tokens"] > 0 and reply["usage"]["output_tokens"] > 0


def test_bench_json_describes_the_run(bench_json, server):
    report, _ = bench_json
    assert report["schema_version"] == 1
    assert report["server"] == {"base_url": server.base_url, "started_by_bench": False,
                                "model": report["server"]["model"], "context_window": 1024}
    settings = report["settings"]
    assert settings["quick"] and settings["users"] == 2 and settings["cache_ttl"] == "5m"
    assert 128 < settings["document_tokens"] < 1024
    assert report["prices"]["cache_read_multiplier"] == 0.1


def test_bench_long_document_is_cached(bench_json):
    doc = bench_json[0]["long_document"]
    for reply in doc["uncached"]["requests"] + doc["cached"]["requests"]:
        sane_reply(reply)
    for reply in doc["uncached"]["requests"]:
        assert reply["usage"]["cache_read_input_tokens"] == 0
        assert reply["usage"]["cache_creation_input_tokens"] == 0
    cold, warm = (r["usage"] for r in doc["cached"]["requests"])
    assert cold["cache_creation_input_tokens"] >= doc["document_tokens"] - 16
    assert warm["cache_read_input_tokens"] >= cold["cache_creation_input_tokens"] > 0
    assert doc["cold_ttft_s"] == doc["cached"]["requests"][0]["ttft_s"] > 0
    assert doc["cached_ttft_s"] == doc["cached"]["requests"][1]["ttft_s"] > 0
    assert doc["uncached_ttft_s"] > 0
    assert doc["cached_ttft_ratio"] == pytest.approx(doc["cached_ttft_s"] / doc["cold_ttft_s"])


def test_bench_conversation_reads_the_cache_from_turn_two(bench_json):
    conversation = bench_json[0]["conversation"]
    turns = conversation["turns"]
    assert [t["turn"] for t in turns] == [1, 2, 3, 4]
    for turn in turns:
        sane_reply(turn)
    assert all(t["usage"]["cache_read_input_tokens"] > 0 for t in turns[1:])
    assert conversation["lowest_cached_share_after_first"] > 0.5


def test_bench_streaming_and_users(bench_json):
    report = bench_json[0]
    sane_reply(report["streaming"]["streaming"])
    whole = report["streaming"]["non_streaming"]
    sane_reply(whole)
    assert whole["ttft_s"] == pytest.approx(whole["total_s"])  # its text comes all at once
    for mode in ("sequential", "concurrent"):
        run = report["users"][mode]
        assert [u["user"] for u in run["users"]] == [1, 2]
        for user in run["users"]:
            assert 0 < user["ttft_s"] <= user["total_s"] and 0 < user["done_at_s"] <= run["wall_s"]
            assert user["output_tokens"] > 0


def test_bench_costs_favour_caching(bench_json):
    costs = bench_json[0]["costs"]
    rows = costs["experiments"]
    assert set(rows) == {"long_document_uncached", "long_document_cached", "conversation",
                         "streaming", "users", "batch_one_by_one", "batch"}
    assert all(r["cost_usd"] >= 0 and r["cost_without_cache_usd"] >= 0 for r in rows.values())
    assert rows["long_document_cached"]["cost_usd"] < rows["long_document_uncached"]["cost_usd"]
    assert rows["conversation"]["cost_usd"] < rows["conversation"]["cost_without_cache_usd"]
    assert costs["total_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows.values()))


def test_bench_batch_asks_the_same_questions_at_half_the_price(bench_json):
    report = bench_json[0]
    batch = report["batch"]
    assert report["settings"]["batch_items"] == batch["items"] == 4
    one, whole = batch["one_by_one"], batch["batch"]
    for side in (one, whole):
        assert side["succeeded"] == 4 and side["errored"] == 0 and side["wall_s"] > 0
        assert side["usage"]["output_tokens"] > 0
        # the first question writes the document's cache and the other three read it
        assert side["cache_read_share"] == 0.75
        assert side["usage"]["cache_creation_input_tokens"] > 0
    # the same prompts but for each side's nonce, which tokenizes to a few more or fewer tokens
    assert whole["usage"]["prompt_tokens"] == pytest.approx(one["usage"]["prompt_tokens"], rel=0.05)
    assert batch["wall_ratio"] == pytest.approx(whole["wall_s"] / one["wall_s"])
    rows = report["costs"]["experiments"]
    assert rows["batch"]["requests"] == rows["batch_one_by_one"]["requests"] == 4
    assert whole["cost_usd"] == pytest.approx(rows["batch"]["cost_usd"])
    # the same prompts at half price (the replies may differ in length by a few tokens)
    assert batch["cost_ratio"] == pytest.approx(0.5, rel=0.2)


def test_bench_plot_writes_a_png(bench_json):
    _, plot = bench_json
    assert plot.read_bytes()[:8] == PNG_SIGNATURE


def test_bench_starts_and_stops_a_server_of_its_own():
    result = subprocess.run(preheat("bench", "--quick", "--users", "1"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for title in ("a. Two questions", "b. A 4-turn conversation", "c. Streaming",
                  "d. 1 user,", "e. 4 questions", "f. Cost"):
        assert title in result.stdout


def test_bench_says_when_the_server_refuses(server):
    result = subprocess.run(preheat("bench", "--quick", "--json", "--base-url", server.base_url,
                                    "--api-key", "wrong"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "401" in result.stderr and result.stdout == ""
