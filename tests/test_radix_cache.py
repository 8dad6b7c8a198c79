"""Radix prefix cache: match, insert/split, ref counts, LRU eviction, pins, namespaces."""
import pytest
from kv_fixtures import BS, cache, clock, pool  # noqa: F401 (fixtures)

from preheat.engine.kv.block_pool import BlockPool
from preheat.engine.kv.radix_cache import RadixCache


def put(cache, pool, tokens, ns=""):
    """Insert like a finished sequence would: allocate, insert, release the sequence's refs."""
    blocks = pool.allocate(len(tokens) // BS)
    cache.insert(ns, tokens, blocks)
    pool.decref(blocks)
    return blocks


def test_match_returns_longest_block_aligned_prefix(cache, pool):
    blocks = put(cache, pool, list(range(12)))
    assert cache.match("", list(range(12))) == blocks
    assert cache.match("", list(range(10))) == blocks[:2]  # partial block: round down
    assert cache.match("", list(range(6)) + [99] * 6) == blocks[:1]  # diverges mid-block
    assert cache.match("", [99] * 12) == []


def test_insert_splits_edge_and_shares_common_prefix(cache, pool):
    a = put(cache, pool, list(range(12)))
    b = put(cache, pool, list(range(8)) + [50, 51, 52, 53])
    # The common two blocks stay the tree's; the caller's duplicates were released.
    assert cache.match("", list(range(8)) + [50, 51, 52, 53]) == a[:2] + [b[2]]
    assert cache.match("", list(range(12))) == a
    assert pool.refcount(b[0]) == 0 and pool.refcount(b[1]) == 0
    assert cache.cached_blocks == 4
    assert pool.num_free == 16 - 4


def test_refcounts_shared_blocks_are_not_evicted(cache, pool):
    blocks = put(cache, pool, list(range(8)))
    held = cache.match("", list(range(8)))
    pool.incref(held)  # a running sequence uses them
    assert cache.evict(16) == 0
    pool.decref(held)
    assert cache.evict(16) == 2
    assert pool.num_free == 16
    assert cache.match("", list(range(8))) == []
    assert blocks  # allocated ids were real


def test_lru_eviction_order(cache, pool, clock):
    put(cache, pool, [1] * 4)
    clock.now += 1
    put(cache, pool, [2] * 4)
    clock.now += 1
    cache.match("", [1] * 4)  # touch the first: the second is now least recent
    assert cache.evict(1) == 1
    assert cache.match("", [1] * 4) != []
    assert cache.match("", [2] * 4) == []


def test_eviction_frees_leaves_before_parents(cache, pool):
    put(cache, pool, list(range(8)))
    put(cache, pool, list(range(4)) + [9] * 4)
    assert cache.evict(1) == 1  # one leaf goes, the shared parent stays
    assert len(cache.match("", list(range(4)))) == 1
    assert cache.evict(10) == 2
    assert pool.num_free == 16


def test_pin_blocks_eviction_until_expiry(cache, pool, clock):
    tokens = list(range(10))  # pin ends mid-block: its 2 full blocks are protected
    put(cache, pool, tokens[:8])
    assert cache.pin("", tokens, ttl=300)
    assert cache.pinned_blocks == 2
    assert cache.evict(16) == 0
    clock.now += 299
    cache.tick()
    assert cache.evict(16) == 0 and cache.pinned_blocks == 2
    clock.now += 2
    cache.tick()
    assert cache.pinned_blocks == 0
    assert cache.evict(16) == 2  # expired: an ordinary evictable entry


def test_pin_hit_refreshes_expiry(cache, pool, clock):
    tokens = list(range(8))
    put(cache, pool, tokens)
    assert cache.pin("", tokens, ttl=300)
    clock.now += 200
    assert cache.pins.lookup_pin("", tokens + [7, 7], max_len=10) == 8
    clock.now += 200  # 400 s after pinning, 200 s after the hit
    assert cache.evict(16) == 0
    assert cache.pins.lookup_pin("", tokens, max_len=8) == 8
    clock.now += 301
    assert cache.pins.lookup_pin("", tokens, max_len=8) == 0
    assert cache.evict(16) == 2


def test_lookup_pin_longest_within_limit(cache, pool):
    tokens = list(range(12))
    put(cache, pool, tokens)
    assert cache.pin("", tokens[:5], ttl=60)
    assert cache.pin("", tokens[:11], ttl=60)
    assert cache.pins.lookup_pin("", tokens, max_len=12) == 11
    assert cache.pins.lookup_pin("", tokens, max_len=10) == 5  # may not read past the last breakpoint
    assert cache.pins.lookup_pin("", tokens[:5] + [0] * 7, max_len=12) == 5
    assert cache.pins.lookup_pin("", [5] + tokens[1:], max_len=12) == 0


def test_pin_splits_so_only_the_prefix_is_protected(cache, pool):
    tokens = list(range(16))
    put(cache, pool, tokens)
    assert cache.pin("", tokens[:8], ttl=60)
    assert cache.pinned_blocks == 2
    assert cache.evict(16) == 2  # the unpinned tail goes
    assert len(cache.match("", tokens)) == 2


def test_pin_needs_the_prefix_and_budget_counts_live_pins(pool, clock):
    cache = RadixCache(pool, clock=clock, max_pinned_blocks=3)
    assert not cache.pin("", list(range(8)), ttl=60)  # not in the tree
    assert cache.pins.lookup_pin("", list(range(8)), max_len=8) == 0
    put(cache, pool, list(range(8)))
    assert cache.pins.can_pin(3)
    assert cache.pin("", list(range(8)), ttl=60)
    assert cache.pins.can_pin(1) and not cache.pins.can_pin(2)  # 2 pinned + 2 > 3
    clock.now += 61
    cache.tick()
    assert cache.pins.can_pin(3)


def test_namespaces_are_isolated(cache, pool):
    tokens = list(range(8))
    put(cache, pool, tokens, ns="alice")
    assert cache.pin("alice", tokens, ttl=60)
    assert cache.match("bob", tokens) == []
    assert cache.pins.lookup_pin("bob", tokens, max_len=8) == 0
    assert not cache.pin("bob", tokens, ttl=60)
    assert cache.pins.lookup_pin("alice", tokens, max_len=8) == 8


def test_block_pool_refcounts():
    pool = BlockPool(4, BS)
    a = pool.allocate(3)
    pool.incref(a[:1])
    pool.decref(a)
    assert pool.num_free == 3 and pool.refcount(a[0]) == 1
    pool.decref(a[:1])
    assert pool.num_free == 4
    with pytest.raises(ValueError):
        pool.decref(a[:1])
    with pytest.raises(RuntimeError):
        pool.allocate(5)


def test_release_pins_ends_the_least_recently_refreshed_first(cache, pool, clock):
    old, new = list(range(8)), list(range(100, 108))
    put(cache, pool, old)
    put(cache, pool, new)
    assert cache.pin("", old, ttl=300)
    clock.now += 10
    assert cache.pin("", new, ttl=300)
    assert cache.evict(16) == 0
    assert cache.release_pins(2) == 2
    assert cache.pins.lookup_pin("", old, 8) == 0 and cache.match("", old) == []
    assert cache.pins.lookup_pin("", new, 8) == 8 and cache.pinned_blocks == 2
    assert cache.release_pins(16) == 2 and cache.pinned_blocks == 0
    assert cache.release_pins(1) == 0  # nothing left to end


def test_release_pins_moves_entries_with_a_disk_copy_out_of_ram_first_and_keeps_them(cache, pool, clock):
    plain, on_disk, writing = list(range(8)), list(range(100, 108)), list(range(200, 208))
    for tokens in (plain, on_disk, writing):
        put(cache, pool, tokens)
        assert cache.pin("", tokens, ttl=300)
        clock.now += 1
    entries = {e.tokens: e for e in cache.pins.entries()}
    entries[tuple(on_disk)].on_disk = True
    entries[tuple(writing)].writing = True
    assert cache.release_pins(2) == 2  # the disk copy's blocks, though it is the newest but one
    assert not entries[tuple(on_disk)].in_ram and cache.pins.lookup_pin("", on_disk, 8) == 8
    assert cache.release_pins(2) == 2  # then the one being written: unpinned, still alive
    assert cache.pins.lookup_pin("", writing, 8) == 8 and cache.pins.lookup_pin("", plain, 8) == 8
    assert cache.release_pins(2) == 2  # only then is an entry without a copy ended
    assert cache.pins.lookup_pin("", plain, 8) == 0 and cache.pinned_blocks == 0


def test_a_held_prefix_is_evicted_last_and_only_while_its_hold_lasts(cache, pool, clock):
    held, other = [1] * 8, [2] * 8
    put(cache, pool, held)
    clock.now += 1
    put(cache, pool, other)  # newer: plain LRU would evict ``held`` first
    cache.hold("", held + [9, 9], ttl=60)
    assert cache.evict(2) == 2
    assert cache.match("", held) and not cache.match("", other)
    assert cache.evict(2) == 2  # nothing else is left: a hold never blocks eviction
    assert not cache.match("", held)
    put(cache, pool, held)
    cache.hold("", held, ttl=60)
    clock.now += 61
    put(cache, pool, other)
    assert cache.evict(2) == 2 and not cache.match("", held)  # the hold has run out


def test_a_held_tail_goes_once_to_the_request_that_continues_it(cache, pool, clock):
    tokens = [3] * BS * 2 + [4, 5]  # two full blocks, then a partial one
    put(cache, pool, tokens[: BS * 2])
    tail = pool.allocate(1)[0]  # the finishing sequence's last block
    cache.hold("", tokens, ttl=60, tail_block=tail)
    pool.decref([tail])  # the sequence releases it; the tree's reference keeps it
    assert pool.refcount(tail) == 1 and cache.cached_blocks == 3
    assert cache.take_tail("", tokens[: BS * 2] + [4, 6, 7], BS * 2) is None  # other tokens
    assert cache.take_tail("other", tokens + [7], BS * 2) is None  # other namespace
    assert cache.take_tail("", tokens + [7], BS * 2) == (tail, 2)
    assert cache.take_tail("", tokens + [7], BS * 2) is None  # handed over already
    assert pool.refcount(tail) == 1 and cache.cached_blocks == 2  # the taker's reference now


def test_held_tails_are_freed_after_unheld_entries_and_first_once_expired(cache, pool, clock):
    held = [1] * BS
    put(cache, pool, held)
    tail = pool.allocate(1)[0]
    cache.hold("", held + [2], ttl=60, tail_block=tail)
    pool.decref([tail])
    clock.now += 1
    put(cache, pool, [5] * BS)  # newer, but not held
    free = pool.num_free
    assert cache.evict(1) == 1 and pool.num_free == free + 1
    assert cache.take_tail("", held + [2, 3], BS) == (tail, 1)  # the unheld entry went first
    pool.decref([tail])
    tail = pool.allocate(1)[0]
    cache.hold("", held + [2], ttl=60, tail_block=tail)
    pool.decref([tail])
    clock.now += 61
    assert cache.evict(1) == 1  # the expired tail goes before anything else
    assert cache.take_tail("", held + [2, 3], BS) is None and cache.match("", held)


def test_windows_keep_local_kv_where_requests_resume_and_go_least_recently_used(clock):
    """With sliding-window layers a prefix is resumable only where the window before its end
    has slots: the tree keeps them at resume points, unpinned ones least recently used first,
    pinned ones while the pin lives, none past its blocks' eviction."""
    from preheat.engine.kv.window_slots import WindowSlots

    pool = BlockPool(32, 4)
    slots = WindowSlots(8, 32, window=8, block_size=4)
    cache = RadixCache(pool, clock=clock, slots=slots)
    tokens = list(range(24))
    blocks = pool.allocate(6)
    slots.hold(blocks)  # a sequence that has written 24 tokens
    cache.insert("", tokens, blocks)
    assert cache.keep_window("", tokens) and cache.keep_window("", tokens[:12])
    slots.drop(blocks)  # it leaves: the tree's windows keep blocks 1, 2 (for 12) and 4, 5 (for 24)
    pool.decref(blocks)
    assert [slots.has(b) for b in blocks] == [False, True, True, False, True, True]
    assert cache.match("", tokens) == blocks
    assert cache.cached_len("", tokens[:20] + [99] * 4) == 12  # 16 and 20 need block 3
    assert not cache.keep_window("", tokens[:16])  # its window's local KV is gone
    clock.now += 1
    cache.match("", tokens)  # the window at 24 is the more recently used
    assert cache.evict_windows(1) == 2
    assert cache.cached_len("", tokens[:20] + [99] * 4) == 0 and cache.cached_len("", tokens) == 24
    assert cache.pin("", tokens, 300.0)
    assert cache.evict_windows(8) == 0  # pinned
    assert cache.release_pins(0, num_slots=2) == 2 and slots.num_free == 8
    assert cache.match("", tokens) == []
    assert not cache.keep_window("", tokens[:4])  # block 0 has no slot
    assert cache.evict(6) == 6 and slots.num_free == 8
