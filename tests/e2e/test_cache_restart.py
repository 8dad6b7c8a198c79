"""Pinned prefixes beyond RAM and across a restart, through real ``preheat serve`` processes.

The server's RAM may pin about two of the documents below; the others live in its
disk tier. Every one must still be a hit with the cold run's tokens, before and
after the server restarts on the same disk folder.
"""
from __future__ import annotations

import time

import anthropic
from e2e_helpers import GREEDY, KEY_A, KEY_B, cached_system, document, start_server

QUESTION = [{"role": "user", "content": "What is this text about?"}]
DOCS = 5


def serve(server_logs, name: str, disk) -> object:
    return start_server(server_logs, name, [
        "--api-key", KEY_A, "--api-key", KEY_B, "--min-cache-tokens", "64",
        "--kv-cache-tokens", "4096", "--max-pinned-fraction", "0.4", "--context-window", "1024",
        "--kv-disk-dir", str(disk)])


def ask(server, system: list[dict], key: str = KEY_A):
    client = anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)
    return client.messages.create(model="claude-e2e-model", max_tokens=12, system=system,
                                  messages=QUESTION, extra_body=GREEDY)


def wait_for_disk(server, entries: int) -> dict:
    """/health once the disk tier holds ``entries`` prefixes (writes run beside the engine)."""
    for _ in range(600):
        health = server.health()
        if health["disk_entries"] >= entries:
            return health
        time.sleep(0.1)
    raise AssertionError(f"the disk tier never reached {entries} entries: {server.health()}")


def test_prefixes_beyond_ram_and_a_restart_are_all_hits(server_logs, tmp_path):
    disk = tmp_path / "kv"
    systems = [cached_system(document(450)) for _ in range(DOCS)]
    first = serve(server_logs, "disk-first", disk)
    try:
        cold = [ask(first, system) for system in systems]
        written = [r.usage.cache_creation_input_tokens for r in cold]
        assert all(w > 400 for w in written)
        health = wait_for_disk(first, DOCS)
        assert health["pinned_entries"] == DOCS and health["disk_bytes"] > 0
        assert health["pinned_blocks"] * health["block_size"] < sum(written)  # RAM alone can't
        for system, before, w in zip(systems, cold, written, strict=True):
            hit = ask(first, system)
            assert (hit.usage.cache_read_input_tokens, hit.usage.cache_creation_input_tokens) == (w, 0)
            assert hit.content[0].text == before.content[0].text
    finally:
        first.stop()

    second = serve(server_logs, "disk-restarted", disk)
    try:
        health = second.health()
        assert health["disk_entries"] == DOCS and health["pinned_entries"] == DOCS
        for system, before, w in zip(systems, cold, written, strict=True):
            hit = ask(second, system)
            assert hit.usage.cache_read_input_tokens == w
            assert hit.content[0].text == before.content[0].text
        other_tenant = ask(second, systems[0], key=KEY_B)
        assert other_tenant.usage.cache_read_input_tokens == 0
    finally:
        second.stop()
