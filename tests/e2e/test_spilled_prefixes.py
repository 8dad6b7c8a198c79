"""More pinned prefixes than RAM holds, on the embedded model: every question on them is a
hit, read back from the disk tier, whatever the order (the issue's six-prefix sequence)."""
from __future__ import annotations

import asyncio
import time

import anthropic
import pytest
from e2e_helpers import GPL3, GREEDY, KEY_A, start_server

WORDS = GPL3.read_text().split()


def prefix(i: int) -> str:
    """~2.8k tokens of its own: six of them outgrow an 8192-token pool's pinnable share."""
    start = i * 450
    return f"Document {i} of six.\n" + " ".join((WORDS * 2)[start:start + 2350])


def system(i: int) -> list[dict]:
    return [{"type": "text", "text": prefix(i), "cache_control": {"type": "ephemeral", "ttl": "1h"}}]


@pytest.fixture(scope="module")
def small_pool(server_logs):
    srv = start_server(server_logs, "spill", ["--api-key", KEY_A, "--kv-cache-tokens", "8192",
                                              "--context-window", "4096"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def prewarmed(small_pool) -> list[int]:
    client = anthropic.Anthropic(base_url=small_pool.base_url, api_key=KEY_A, max_retries=0, timeout=300)
    written = []
    for i in range(6):
        reply = client.messages.create(model="claude-x", max_tokens=0, system=system(i),
                                       messages=[{"role": "user", "content": "Read it."}])
        written.append(reply.usage.cache_creation_input_tokens)
    assert min(written) > 2600
    for _ in range(600):  # disk copies are written on idle CPU, after the replies
        health = small_pool.health()
        if health["disk_entries"] == 6:
            break
        time.sleep(0.1)
    assert health["pinned_entries"] == 6 and health["disk_entries"] == 6
    assert health["pinned_blocks"] < 6 * 2500 // health["block_size"]  # they do not all fit in RAM
    return written


async def ask(client: anthropic.AsyncAnthropic, i: int) -> anthropic.types.Message:
    return await client.messages.create(model="claude-x", max_tokens=8, system=system(i),
                                        messages=[{"role": "user", "content": "What is it about?"}],
                                        extra_body=GREEDY)


@pytest.mark.parametrize("order", ["oldest first", "newest first", "all at once"])
def test_every_question_on_a_spilled_prefix_is_a_hit(small_pool, prewarmed, order):
    async def run() -> list[anthropic.types.Message]:
        client = anthropic.AsyncAnthropic(base_url=small_pool.base_url, api_key=KEY_A, max_retries=0,
                                          timeout=300)
        if order == "all at once":
            return list(await asyncio.gather(*(ask(client, i) for i in range(6))))
        indexes = range(6) if order == "oldest first" else range(5, -1, -1)
        replies = {i: await ask(client, i) for i in indexes}
        return [replies[i] for i in range(6)]

    before = small_pool.health()["disk_reads"]
    replies = asyncio.run(run())
    for reply, written in zip(replies, prewarmed, strict=True):
        assert reply.usage.cache_read_input_tokens == written and reply.stop_reason in ("max_tokens", "end_turn")
    health = small_pool.health()
    assert health["disk_reads"] > before  # read back from disk, not recomputed
    assert health["running"] == health["waiting"] == 0
    assert health["free_blocks"] + health["cached_blocks"] == health["total_blocks"]
