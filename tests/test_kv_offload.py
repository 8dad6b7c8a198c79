"""Pinned prefixes across RAM and the disk tier, through a tiny engine: spill, read back,
restart, expiry, damage, tenants, quota. Every hit must give the cold run's tokens."""
import threading
from pathlib import Path

import pytest

from engine_driver import GREEDY, FakeClock, ids, run
from preheat.engine.output import Finished
from preheat.engine.request import CacheBreakpoint, GenerationRequest, SamplingParams
from tiny import tiny_engine

BS = 4
DOC = 36  # tokens per pinned prefix: 9 blocks


def engine_at(disk: Path, digest: str = "model-a", **config):
    # 32 blocks of RAM, of which pins may hold 18: two documents
    settings = {"kv_cache_tokens": 128, "max_pinned_fraction": 0.57, "kv_disk_dir": disk,
                "kv_disk_bytes": 1 << 30, **config}
    return tiny_engine(model_digest=digest, **settings)


def ask(engine, doc: list[int], tail: int, namespace: str = ""):
    """A request on ``doc`` + a question, with a breakpoint after the doc."""
    req = GenerationRequest(doc + ids(5, tail), GREEDY, namespace=namespace,
                            breakpoints=(CacheBreakpoint(len(doc), 300.0),))
    return run(engine, [req])[0]


def settle(engine) -> None:
    """Let queued disk writes finish and the engine act on them (spill over budget)."""
    assert engine.offload.tier.flush(30)
    engine.offload.poll()


def cold_tokens(doc: list[int], tail: int) -> list[int]:
    return run(tiny_engine(), [GenerationRequest(doc + ids(5, tail), GREEDY)])[0].output_ids


def test_more_pinned_prefixes_than_ram_holds_all_hit_with_cold_tokens(tmp_path):
    engine = engine_at(tmp_path)
    docs = [ids(DOC, seed) for seed in range(6)]
    for doc in docs:
        assert ask(engine, doc, 1).usage.cache_write_tokens == DOC
        settle(engine)
    in_ram = [e for e in engine.radix.pins.entries() if e.in_ram]
    assert engine.radix.pinned_blocks <= engine.radix.pins.max_pinned_blocks and len(in_ram) == 2
    assert engine.offload.tier.num_entries == 6
    for seed, doc in enumerate(docs):
        out = ask(engine, doc, 2)
        assert (out.usage.cache_read_tokens, out.usage.cache_write_tokens) == (DOC, 0)
        assert out.output_ids == cold_tokens(doc, 2), f"document {seed}"
        settle(engine)
    assert engine.stats().disk_entries == 6 and engine.stats().pinned_entries == 6
    assert engine.offload.num_reads >= 4  # RAM had evicted them: read back, not recomputed


def test_pinned_prefixes_survive_a_restart(tmp_path):
    docs = [ids(DOC, seed) for seed in range(4)]
    first = engine_at(tmp_path)
    for doc in docs:
        ask(first, doc, 1)
    first.close()
    restarted = engine_at(tmp_path)
    assert restarted.stats().disk_entries == 4 and restarted.radix.pinned_blocks == 0
    for doc in docs:
        out = restarted.radix.pins.lookup_pin("", doc + [1], DOC)
        assert out == DOC
        hit = ask(restarted, doc, 3)
        assert hit.usage.cache_read_tokens == DOC and hit.output_ids == cold_tokens(doc, 3)
    assert restarted.offload.num_reads == 4
    other_model = engine_at(tmp_path, digest="model-b")
    assert other_model.stats().disk_entries == 0
    assert ask(other_model, docs[0], 3).usage.cache_read_tokens == 0


def test_spilled_entries_expire_with_their_ttl(tmp_path):
    clock = FakeClock()
    engine = engine_at(tmp_path, clock=clock)
    docs = [ids(DOC, seed) for seed in range(4)]
    for doc in docs:
        ask(engine, doc, 1)
        settle(engine)
    clock.now += 301
    engine.step()  # the engine notices expiry on its next step
    assert engine.offload.tier.flush(30)
    assert engine.stats().disk_entries == 0 and not [*tmp_path.rglob("*.seg"), *tmp_path.rglob("*.pin")]
    assert ask(engine, docs[0], 2).usage.cache_read_tokens == 0


def test_a_damaged_file_is_recomputed_not_served(tmp_path, caplog):
    docs = [ids(DOC, seed) for seed in range(4)]
    first = engine_at(tmp_path)
    for doc in docs:
        ask(first, doc, 1)
    first.close()
    for path in tmp_path.rglob("*.seg"):
        data = bytearray(path.read_bytes())
        data[-10] ^= 0xFF  # inside the KV bytes: only the checksum can tell
        path.write_bytes(bytes(data))
    restarted = engine_at(tmp_path)
    out = ask(restarted, docs[0], 3)
    assert out.output_ids == cold_tokens(docs[0], 3)
    assert "checksum mismatch" in caplog.text


def test_two_tenants_with_the_same_prompt_each_have_their_own_entry(tmp_path):
    doc = ids(DOC, 7)
    engine = engine_at(tmp_path)
    assert ask(engine, doc, 1, namespace="alice").usage.cache_write_tokens == DOC
    assert ask(engine, doc, 1, namespace="bob").usage.cache_write_tokens == DOC  # not alice's hit
    settle(engine)
    assert engine.offload.tier.num_entries == 2
    engine.close()
    restarted = engine_at(tmp_path)
    for tenant in ("alice", "bob"):
        assert ask(restarted, doc, 2, namespace=tenant).usage.cache_read_tokens == DOC
    assert ask(restarted, doc, 2, namespace="carol").usage.cache_read_tokens == 0


def test_a_full_disk_quota_drops_the_oldest_then_refuses_honestly(tmp_path):
    one = engine_at(tmp_path / "probe").offload.tier.entry_bytes(DOC // BS)
    engine = engine_at(tmp_path / "kv", kv_disk_bytes=int(one * 2.5))
    docs = [ids(DOC, seed) for seed in range(4)]
    for doc in docs:
        ask(engine, doc, 1)
        settle(engine)
    # RAM pins two entries, the disk holds two. The newest two live on; of the two oldest,
    # one or both are gone altogether (one may still be pinned in RAM, depending on whether
    # its disk copy went before or after it left RAM).
    assert engine.offload.tier.num_entries == 2
    hits = [engine.radix.pins.lookup_pin("", doc + [1], DOC) for doc in docs]
    assert hits[2:] == [DOC, DOC] and 0 in hits[:2]
    missing = docs[hits.index(0)]
    assert ask(engine, missing, 2).usage.cache_read_tokens == 0  # an honest miss
    tight = engine_at(tmp_path / "tight", kv_disk_bytes=one // 2)
    # a prefix larger than the whole quota: its write is refused up front, and usage says so
    assert ask(tight, docs[0], 1).usage.cache_write_tokens == 0


@pytest.mark.parametrize("kv_dtype", ["float16", "bfloat16"])
def test_16_bit_kv_round_trips_through_disk(tmp_path, kv_dtype):
    docs = [ids(DOC, seed) for seed in range(3)]
    first = engine_at(tmp_path, kv_dtype=kv_dtype)
    for doc in docs:
        ask(first, doc, 1)
    first.close()
    restarted = engine_at(tmp_path, kv_dtype=kv_dtype)
    want = run(tiny_engine(kv_dtype=kv_dtype), [GenerationRequest(docs[1] + ids(5, 4), GREEDY)])[0]
    assert ask(restarted, docs[1], 4).output_ids == want.output_ids


def test_a_read_from_disk_holds_up_no_one_and_the_engine_sleeps_meanwhile(tmp_path):
    doc = ids(DOC, 1)
    first = engine_at(tmp_path)
    ask(first, doc, 1)
    first.close()
    engine = engine_at(tmp_path)
    tier = engine.offload.tier
    gate, waits = threading.Event(), []
    slow_load, real_wait = tier._load, tier.wait
    tier._load = lambda key: (gate.wait(60), slow_load(key))
    tier.wait = lambda timeout: (waits.append(timeout), real_wait(timeout))

    hit = GenerationRequest(doc + ids(5, 2), GREEDY, breakpoints=(CacheBreakpoint(DOC, 300.0),))
    other = GenerationRequest(ids(20, 3), GREEDY)
    for req in (hit, other):
        engine.enqueue(engine.prepare(req))
    finished = {}
    while other.request_id not in finished:  # the other request runs to the end first
        finished.update((rid, ev) for rid, ev in engine.step() if isinstance(ev, Finished))
    assert hit.request_id not in finished and not waits
    engine.step()  # only the read is left: the engine sleeps on the tier instead of spinning
    assert waits
    gate.set()
    while engine.has_work:
        finished.update((rid, ev) for rid, ev in engine.step() if isinstance(ev, Finished))
    out = finished[hit.request_id]
    assert out.usage.cache_read_tokens == DOC and out.output_ids == cold_tokens(doc, 2)
    assert engine.offload.num_reads == 1


def test_reading_back_a_prefix_whose_start_is_cached_under_memory_pressure(tmp_path):
    doc = ids(DOC, 1)
    engine = engine_at(tmp_path)
    ask(engine, doc, 1)
    settle(engine)
    [entry] = engine.radix.pins.entries()
    engine.radix.pins.unpin_ram(entry)
    engine.radix.evict(engine.pool.num_blocks)  # the prefix is on disk only
    # its first 5 blocks are back as ordinary cache (another request shared them), they are
    # all the pool could evict, and only 3 blocks are free: the read needs 4 more
    head = engine.pool.allocate(5)
    engine.radix.insert("", doc[:20], head)
    engine.pool.decref(head)
    busy = engine.pool.allocate(engine.pool.num_free - 3)
    hit = GenerationRequest(doc + ids(5, 2), GREEDY, breakpoints=(CacheBreakpoint(DOC, 300.0),))
    engine.enqueue(engine.prepare(hit))
    for _ in range(5):  # making room evicts the cached start: the read must wait, whole
        assert engine.step() == []
    engine.pool.decref(busy)
    finished = {}
    while engine.has_work:
        finished.update((rid, ev) for rid, ev in engine.step() if isinstance(ev, Finished))
    out = finished[hit.request_id]
    assert out.usage.cache_read_tokens == DOC and out.output_ids == cold_tokens(doc, 2)
    assert engine.offload.num_reads == 1 and min(engine.radix.match("", doc)) >= 0


def test_a_breakpoint_that_moves_forward_writes_only_the_new_blocks(tmp_path):
    doc = ids(DOC, 21)
    longer = doc + ids(16, 22)  # the next turn: its breakpoint 4 blocks further on
    engine = engine_at(tmp_path)
    ask(engine, doc, 1)
    settle(engine)
    tier = engine.offload.tier
    before = tier.used_bytes
    assert ask(engine, longer, 1).usage.cache_read_tokens == DOC
    settle(engine)
    assert tier.num_entries == 2 and tier.num_segments == 2
    assert tier.used_bytes - before < tier.entry_bytes(5)  # 4 blocks, not the whole prefix again
    engine.close()
    restarted = engine_at(tmp_path)
    hit = ask(restarted, longer, 3)
    assert hit.usage.cache_read_tokens == len(longer) and restarted.offload.num_reads == 1
    assert hit.output_ids == cold_tokens(longer, 3)


def prewarm(engine, doc: list[int], namespace: str = "") -> None:
    """``max_tokens: 0`` with an hour's breakpoint: the prefix is written, nothing generated."""
    req = GenerationRequest(list(doc), SamplingParams(max_tokens=0, temperature=0), namespace=namespace,
                            breakpoints=(CacheBreakpoint(len(doc), 3600.0),))
    run(engine, [req])


def bounded_run(engine, requests: list[GenerationRequest], max_steps: int = 400) -> list[Finished]:
    """``run``, but a request that never ends fails the test instead of hanging it."""
    seqs = [engine.prepare(r) for r in requests]
    for s in seqs:
        engine.enqueue(s)
    done: dict[str, Finished] = {}
    for _ in range(max_steps):
        if not engine.has_work:
            return [done[r.request_id] for r in requests]
        done.update((rid, ev) for rid, ev in engine.step() if isinstance(ev, Finished))
    stats = engine.stats()
    raise AssertionError(f"still not done after {max_steps} steps: running {stats.running}, waiting "
                         f"{stats.waiting}, free {stats.free_blocks}, pinned {stats.pinned_blocks}")


# The sequence at tiny scale: 32 blocks, pins may hold 24 (two 11-block documents,
# which leaves 10 blocks free), six documents pre-warmed.
BIG_DOC = 44


@pytest.mark.parametrize("order", ["newest first", "oldest first", "all at once"])
def test_hits_on_spilled_prefixes_whose_read_back_needs_pinned_ram_all_end(tmp_path, order):
    engine = engine_at(tmp_path, max_pinned_fraction=0.75)
    docs = [ids(BIG_DOC, 40 + seed) for seed in range(6)]
    for doc in docs:
        prewarm(engine, doc)
        settle(engine)
    assert engine.stats().disk_entries == 6
    questions = [GenerationRequest(doc + ids(5, 9), GREEDY, breakpoints=(CacheBreakpoint(BIG_DOC, 3600.0),))
                 for doc in docs]
    if order == "all at once":
        outs = bounded_run(engine, questions)
    else:
        seq = questions[::-1] if order == "newest first" else questions
        outs = [bounded_run(engine, [q])[0] for q in seq]
        outs = outs[::-1] if order == "newest first" else outs
    for doc, out in zip(docs, outs, strict=True):
        assert out.usage.cache_read_tokens == BIG_DOC
        assert out.output_ids == run(tiny_engine(), [GenerationRequest(doc + ids(5, 9), GREEDY)])[0].output_ids
    stats = engine.stats()
    assert stats.running == stats.waiting == 0 and engine.offload.num_reads >= 4
    assert stats.free_blocks + stats.cached_blocks == stats.total_blocks  # nothing leaked


def test_a_read_back_that_only_undisked_pins_could_make_room_for_is_recomputed(tmp_path):
    doc = ids(BIG_DOC, 50)
    engine = engine_at(tmp_path, max_pinned_fraction=1.0)
    prewarm(engine, doc)
    settle(engine)
    [entry] = engine.radix.pins.entries()
    engine.radix.pins.unpin_ram(entry)
    engine.radix.evict(engine.pool.num_blocks)  # on disk only
    # pins with no disk copy (their writes failed, say) hold all but 6 blocks; nothing runs
    listener, engine.radix.pins.listener = engine.radix.pins.listener, None
    filler = ids(engine.pool.num_free * BS, 51)[: (engine.pool.num_free - 6) * BS]
    blocks = engine.pool.allocate(len(filler) // BS)
    engine.radix.insert("", filler, blocks)
    engine.pool.decref(blocks)
    assert engine.radix.pin("", filler, 3600.0)
    engine.radix.pins.listener = listener
    out = bounded_run(engine, [GenerationRequest(doc + ids(5, 9), GREEDY, breakpoints=(
        CacheBreakpoint(BIG_DOC, 3600.0),))])[0]
    assert out.usage.cache_read_tokens == BIG_DOC and engine.offload.num_reads == 0
    assert out.output_ids == run(tiny_engine(), [GenerationRequest(doc + ids(5, 9), GREEDY)])[0].output_ids
