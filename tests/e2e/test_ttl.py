"""Cache lifetimes on a server whose "5m" lasts 4 s: a hit refreshes, an idle entry expires.

The same server is started with ``--preheat``: its system prompt is pinned
before /health answers and read by the first request.
"""
from __future__ import annotations

import time

import anthropic
import pytest
from e2e_helpers import GPL3, cached_system, document, start_server

TTL_5M = 4.0
PREHEAT_KEY = "preheat-tenant"
PREHEATED = " ".join(GPL3.read_text().split()[:120])
QUESTION = [{"role": "user", "content": "Summarise."}]


@pytest.fixture(scope="module")
def ttl_server(server_logs, tmp_path_factory):
    prompt_file = tmp_path_factory.mktemp("preheat") / "system.txt"
    prompt_file.write_text(PREHEATED)
    srv = start_server(server_logs, "ttl", [
        "--min-cache-tokens", "32", "--ttl-5m-seconds", str(TTL_5M), "--ttl-1h-seconds", "60",
        "--kv-cache-tokens", "4096", "--context-window", "1024",
        "--preheat", str(prompt_file), "--preheat-key", PREHEAT_KEY])
    yield srv
    srv.stop()


def client_for(server, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)


def test_a_hit_refreshes_the_ttl_and_an_idle_entry_expires(ttl_server):
    client = client_for(ttl_server, "ttl-tenant")
    system = cached_system(document(60))

    def usage():
        return client.messages.create(model="claude-e2e-model", max_tokens=1, system=system,
                                      messages=QUESTION).usage

    written = usage().cache_creation_input_tokens
    assert written > 0
    time.sleep(TTL_5M * 0.6)
    assert usage().cache_read_input_tokens == written  # a hit: the TTL starts again
    time.sleep(TTL_5M * 0.6)  # past the first write's TTL, within the refreshed one
    assert usage().cache_read_input_tokens == written
    time.sleep(TTL_5M * 1.5)
    expired = usage()
    assert expired.cache_read_input_tokens == 0
    assert expired.cache_creation_input_tokens == written


def test_preheated_system_prompt_is_read_by_the_first_request(ttl_server):
    system = cached_system(PREHEATED, ttl="1h")
    first = client_for(ttl_server, PREHEAT_KEY).messages.create(
        model="claude-e2e-model", max_tokens=1, system=system, messages=QUESTION)
    assert first.usage.cache_read_input_tokens > 32
    assert first.usage.cache_creation_input_tokens == 0
    # pinned for that key only
    other = client_for(ttl_server, "someone-else").messages.create(
        model="claude-e2e-model", max_tokens=1, system=system, messages=QUESTION)
    assert other.usage.cache_read_input_tokens == 0
