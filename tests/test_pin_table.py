"""The pin table: the nodes each pin covers follow the tree's splits and evictions, and
unpinning, expiry and counting touch those nodes only."""
import pytest
from kv_fixtures import BS, cache, clock, pool  # noqa: F401 (fixtures)

from preheat.engine.kv.block_pool import BlockPool
from preheat.engine.kv.pin_table import PinEntry
from preheat.engine.kv.radix_cache import RadixCache


class Recorder:
    """A pin listener that keeps what it heard."""

    def __init__(self) -> None:
        self.placed: list[tuple[PinEntry, list[int]]] = []
        self.ended: list[list[PinEntry]] = []  # one list a call

    def pinned(self, entry: PinEntry, blocks: list[int]) -> None:
        self.placed.append((entry, blocks))

    def hit(self, entry: PinEntry) -> None:
        pass

    def dropped(self, entries: list[PinEntry]) -> None:
        self.ended.append(list(entries))


@pytest.fixture
def heard(cache):
    cache.pins.listener = Recorder()
    return cache.pins.listener


def put(cache, pool, tokens, ns=""):
    """Insert like a finished sequence would: allocate, insert, release the sequence's refs."""
    blocks = pool.allocate(len(tokens) // BS)
    cache.insert(ns, tokens, blocks)
    pool.decref(blocks)
    return blocks


def entry_of(cache, tokens) -> PinEntry:
    [entry] = [e for e in cache.pins.entries() if e.tokens == tuple(tokens)]
    return entry


def recorded_nodes(cache) -> int:
    """How many tree nodes the pin table has on record as covered."""
    return len(cache.pins._entries_on)


def no_tree_walk(monkeypatch, cache) -> None:
    """From now on, anything that visits every node of ``cache`` fails the test."""
    def walk():
        raise AssertionError("walked the whole tree")
    monkeypatch.setattr(cache, "_nodes", walk)


def test_a_pin_covers_both_halves_when_its_node_is_split(cache, pool):
    pinned = list(range(8))
    put(cache, pool, pinned)
    assert cache.pin("", pinned, ttl=60)
    assert recorded_nodes(cache) == 1
    put(cache, pool, pinned[:4] + [99] * 4)  # splits the pinned node after its first block
    assert recorded_nodes(cache) == 2 and cache.pinned_blocks == 2
    assert cache.evict(16) == 1  # only the new branch: both halves stay protected
    assert len(cache.match("", pinned)) == 2
    cache.pins.unpin_ram(entry_of(cache, pinned))
    assert cache.pinned_blocks == 0 and recorded_nodes(cache) == 0
    assert cache.evict(16) == 2  # no half is left protected by a stale record


def test_a_count_after_a_split_still_counts_each_block_once(cache, pool):
    pinned, other = list(range(8)), list(range(100, 104))
    put(cache, pool, pinned)
    assert cache.pin("", pinned, ttl=60)
    put(cache, pool, pinned[:4] + [99] * 4)
    put(cache, pool, other)
    assert cache.pin("", other, ttl=60)  # recounts, with the split node in two
    assert cache.pinned_blocks == 3


def test_unpin_ram_touches_only_its_nodes_and_leaves_other_pins(cache, pool, monkeypatch):
    shared, a, b = list(range(8)), list(range(8)) + [50] * 4, list(range(8)) + [60] * 4
    put(cache, pool, a)
    put(cache, pool, b)
    put(cache, pool, list(range(200, 216)))  # unpinned nodes elsewhere in the tree
    for tokens in (shared, a, b):
        assert cache.pin("", tokens, ttl=60)
    assert cache.pinned_blocks == 4
    no_tree_walk(monkeypatch, cache)
    cache.pins.unpin_ram(entry_of(cache, a))
    assert cache.pinned_blocks == 3 and not entry_of(cache, a).in_ram
    cache.pins.unpin_ram(entry_of(cache, shared))
    assert cache.pinned_blocks == 3  # b still covers the shared blocks
    assert cache.pins.lookup_pin("", a, 12) == 12  # out of RAM, still alive


def test_expiry_retires_only_expired_entries(cache, pool, clock, heard, monkeypatch):
    prefixes = [list(range(i * 100, i * 100 + 8)) for i in range(3)]
    for ttl, tokens in zip((100, 200, 300), prefixes):
        put(cache, pool, tokens)
        assert cache.pin("", tokens, ttl=ttl)
    assert cache.pinned_blocks == 6
    no_tree_walk(monkeypatch, cache)
    for step, tokens in enumerate(prefixes, start=1):
        clock.now += 100
        cache.tick()
        assert len(heard.ended) == step and [e.tokens for e in heard.ended[-1]] == [tuple(tokens)]
        assert cache.pinned_blocks == 6 - 2 * step
        assert len(cache.pins.entries()) == 3 - step


def test_an_expired_pin_protects_nothing_before_it_is_retired(cache, pool, clock, heard):
    old, new = list(range(8)), list(range(100, 108))
    put(cache, pool, old)
    assert cache.pin("", old, ttl=60)
    clock.now += 30
    put(cache, pool, new)
    assert cache.pin("", new, ttl=60)
    clock.now += 31  # ``old`` has expired; no tick has retired it
    assert cache.evict(16) == 2 and cache.match("", old) == [] and cache.match("", new)
    cache.tick()
    assert [e.tokens for e in heard.ended[-1]] == [tuple(old)]
    assert cache.pinned_blocks == 2


def test_an_evicted_then_reinserted_prefix_can_be_pinned_again(cache, pool, clock, heard):
    tokens = list(range(8))
    put(cache, pool, tokens)
    assert cache.pin("", tokens, ttl=60)
    clock.now += 61
    assert cache.evict(16) == 2  # expired, so evicted (still in the table until a tick)
    assert recorded_nodes(cache) == 0  # the table holds on to no node the tree let go
    assert not cache.pin("", tokens, ttl=60)  # its blocks are gone
    blocks = put(cache, pool, tokens)
    assert cache.pin("", tokens, ttl=60)
    assert heard.placed[-1][1] == blocks and cache.pinned_blocks == 2
    cache.tick()
    assert cache.pinned_blocks == 2 and cache.evict(16) == 0
    cache.pins.unpin_ram(entry_of(cache, tokens))
    assert cache.pinned_blocks == 0 and cache.evict(16) == 2


def test_forget_drops_a_disk_only_entry_and_tells_the_listener(cache, pool, clock, heard):
    entry = PinEntry("", tuple(range(8)), 60.0, clock.now + 60, on_disk=True)
    cache.pins.restore(entry)
    assert cache.pins.lookup_pin("", list(range(8)), 8) == 8 and not entry.in_ram
    cache.pins.forget(entry)
    assert heard.ended == [[entry]] and cache.pins.entries() == []
    assert cache.pins.lookup_pin("", list(range(8)), 8) == 0
