"""The disk tier's files: round trip, shared blocks, integrity, isolation, quota, expiry,
crash safety."""
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from preheat.engine.kv.disk_format import cache_fingerprint, prefix_key
from preheat.engine.kv.disk_tier import DiskTier, Evicted, Loaded, LoadFailed, WriteFailed, Written

LAYERS, BLOCK_SHAPE = 2, (4, 2, 32)  # 4 tokens a block, 2 kv heads, 16 fp16 dims
FP = cache_fingerprint(model="m1", kv_dtype="float16", block_size=4)
DAY = 86400.0


def kv_for(num_blocks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (LAYERS, 2, num_blocks, *BLOCK_SHAPE), dtype=np.uint8)


def tier_at(root: Path, quota: int = 1 << 30, fingerprint: str = FP, **kw) -> DiskTier:
    return DiskTier(root, fingerprint, quota, LAYERS, BLOCK_SHAPE, **kw)


def settle(tier: DiskTier, want: int, timeout: float = 30.0) -> list:
    """The next ``want`` completions (the tier's threads post them)."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        tier.wait(0.1)
        got += tier.completions()
    assert len(got) >= want, got
    return got


def store(tier: DiskTier, ns: str, tokens: tuple[int, ...], kv: np.ndarray, expiry: float | None = None) -> str:
    key = tier.write(ns, tokens, 300.0, time.time() + DAY if expiry is None else expiry,
                     lambda first: kv[:, :, first:])
    assert isinstance(settle(tier, 1)[-1], Written)
    return key


def load(tier: DiskTier, key: str):
    tier.load(key)
    return settle(tier, 1)[0]


def test_round_trip_and_restart(tmp_path):
    tokens, kv = tuple(range(10)), kv_for(2, 1)
    tier = tier_at(tmp_path)
    key = store(tier, "alice", tokens, kv)
    assert key == prefix_key("alice", tokens) and tier.num_entries == 1
    loaded = load(tier, key)
    assert isinstance(loaded, Loaded) and np.array_equal(loaded.kv, kv)

    again = tier_at(tmp_path)  # a restarted server
    [entry] = again.scan()
    assert (entry.namespace, entry.tokens, entry.ttl) == ("alice", tokens, 300.0)
    assert np.array_equal(load(again, key).kv, kv)


def test_refreshed_expiry_survives_restart(tmp_path):
    tier = tier_at(tmp_path)
    key = store(tier, "", (1, 2, 3, 4), kv_for(1, 2), expiry=time.time() + 5)
    tier.refresh(key, time.time() + DAY)
    assert tier.flush(10)
    [entry] = tier_at(tmp_path).scan()
    assert entry.expiry > time.time() + DAY / 2


def test_expired_entries_are_deleted_at_start(tmp_path):
    clock = [time.time()]
    tier = tier_at(tmp_path, wall_clock=lambda: clock[0])
    store(tier, "", (1, 2, 3, 4), kv_for(1, 3), expiry=clock[0] + 60)
    store(tier, "", (5, 6, 7, 8), kv_for(1, 4), expiry=clock[0] + 600)
    clock[0] += 120
    later = tier_at(tmp_path, wall_clock=lambda: clock[0])
    assert [e.tokens for e in later.scan()] == [(5, 6, 7, 8)]
    assert len(list(later.root.glob("*/*.pin"))) == 1 and len(list(later.root.glob("*/*.seg"))) == 1


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def damage_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


@pytest.mark.parametrize("damage", [damage_truncate, damage_flip, damage_garbage])
def test_damaged_segments_are_dropped_never_served(tmp_path, damage, caplog):
    tier = tier_at(tmp_path)
    key = store(tier, "", tuple(range(8)), kv_for(2, 5))
    [path] = tier.root.glob("*/*.seg")
    damage(path)
    if damage is damage_flip:  # the header still reads: found at start, caught on the read
        assert len(tier_at(tmp_path).scan()) == 1
        failed = load(tier, key)
        assert isinstance(failed, LoadFailed) and "checksum" in failed.reason
        assert tier.flush(10)
    else:
        assert tier_at(tmp_path).scan() == []
    assert not list(tier.root.glob("*/*.*")) and "dropping cache file" in caplog.text


@pytest.mark.parametrize("damage", [damage_truncate, damage_flip, damage_garbage])
def test_damaged_pins_are_dropped_at_start_with_their_segments(tmp_path, damage, caplog):
    store(tier_at(tmp_path), "", tuple(range(8)), kv_for(2, 5))
    [pin] = tier_at(tmp_path).root.glob("*/*.pin")
    damage(pin)
    assert tier_at(tmp_path).scan() == []
    assert not list(pin.parent.glob("*.*")) and "dropping cache file" in caplog.text


def test_files_of_another_configuration_are_never_read(tmp_path):
    store(tier_at(tmp_path), "", tuple(range(8)), kv_for(2, 6))
    other_fp = cache_fingerprint(model="m2", kv_dtype="float16", block_size=4)
    other = tier_at(tmp_path, fingerprint=other_fp)
    assert other.scan() == []  # its own folder: the first model's files are not even seen
    # a file copied into the other configuration's folder is detected by its header
    copies = []
    for src in tier_at(tmp_path).root.glob("*/*.*"):
        copies.append(other.root / src.parent.name / src.name)
        copies[-1].parent.mkdir(parents=True, exist_ok=True)
        copies[-1].write_bytes(src.read_bytes())
    assert len(copies) == 2
    assert tier_at(tmp_path, fingerprint=other_fp).scan() == [] and not any(p.exists() for p in copies)


def test_tenants_are_kept_apart(tmp_path):
    tokens = tuple(range(8))
    tier = tier_at(tmp_path)
    key_a = store(tier, "alice", tokens, kv_for(2, 7))
    key_b = store(tier, "bob", tokens, kv_for(2, 8))
    assert key_a != key_b and tier.num_entries == 2
    [path_a] = tier.root.glob(f"*/{key_a}.pin")
    [path_b] = tier.root.glob(f"*/{key_b}.pin")
    assert path_a.parent != path_b.parent
    # bob's file moved under alice's name is refused: the entry says whose it is
    path_b.replace(path_a)
    assert {e.namespace for e in tier_at(tmp_path).scan()} == set()


def test_quota_drops_least_recently_used_first_then_refuses(tmp_path):
    one = tier_at(tmp_path).entry_bytes(2)
    tier = tier_at(tmp_path, quota=int(one * 2.7))  # two entries and their headers
    k1 = store(tier, "", (1,) * 8, kv_for(2, 1))
    k2 = store(tier, "", (2,) * 8, kv_for(2, 2))
    tier.refresh(k1, time.time() + DAY)  # k1 used since: k2 is the least recently used
    tier.write("", (3,) * 8, 300.0, time.time() + DAY, lambda first: kv_for(2, 3))
    done = settle(tier, 2)
    assert Evicted(k2) in done and any(isinstance(d, Written) for d in done)
    assert tier.num_entries == 2 and tier.used_bytes <= tier.quota_bytes
    assert isinstance(load(tier, k1), Loaded)
    tier.write("", (4,) * 32, 300.0, time.time() + DAY, lambda first: kv_for(8, 4))  # larger than the quota
    [refused] = settle(tier, 1)
    assert isinstance(refused, WriteFailed) and "quota" in refused.reason and tier.num_entries == 2


def _write_forever(root: str) -> None:
    tier = tier_at(Path(root))
    kv = kv_for(32768, 9)  # 32 MiB: a write takes long enough to be killed in the middle
    for i in range(10_000):
        tier.write("", (i,) * (32768 * 4), 300.0, time.time() + DAY, lambda first: kv)
        tier.flush(60)


def test_a_crash_mid_write_leaves_no_entry_that_loads(tmp_path):
    child = multiprocessing.get_context("spawn").Process(target=_write_forever, args=(str(tmp_path),))
    child.start()
    root = tier_at(tmp_path).root
    deadline = time.monotonic() + 120
    # kill it while its second file is being written
    while not (list(root.glob("*/*.pin")) and list(root.glob("*/.*.tmp"))):
        assert time.monotonic() < deadline and child.is_alive()
        time.sleep(0.001)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert list(root.glob("*/.*.tmp"))  # the kill left a partial file behind
    tier = tier_at(tmp_path)
    entries = tier.scan()
    assert entries and not list(root.glob("*/.*"))  # the partial file is gone, not an entry
    for entry in entries:  # every entry that survived reads back whole
        assert isinstance(load(tier, prefix_key(entry.namespace, entry.tokens)), Loaded)


def test_a_prefix_that_extends_one_on_disk_writes_only_its_new_blocks(tmp_path):
    doc, turn = tuple(range(32)), tuple(range(48))  # 8 blocks, then 4 more
    kv_doc, kv_turn = kv_for(8, 10), np.concatenate([kv_for(8, 10), kv_for(4, 11)], axis=2)
    tier = tier_at(tmp_path)
    k_doc = store(tier, "", doc, kv_doc)
    before, asked = tier.used_bytes, []
    k_turn = tier.write("", turn, 300.0, time.time() + DAY, lambda first: (asked.append(first), kv_turn[:, :, first:])[1])
    assert isinstance(settle(tier, 1)[0], Written)
    assert asked == [8] and tier.num_segments == 2
    assert tier.used_bytes - before < tier.entry_bytes(5)  # four blocks, a header and a pin file
    assert np.array_equal(load(tier, k_turn).kv, kv_turn) and np.array_equal(load(tier, k_doc).kv, kv_doc)

    tier.delete(k_doc)  # the longer prefix still uses the document's blocks
    assert tier.flush(10) and tier.num_entries == 1 and tier.num_segments == 2
    assert np.array_equal(load(tier, k_turn).kv, kv_turn)
    again = tier_at(tmp_path)  # a restart finds the chain
    assert [e.tokens for e in again.scan()] == [turn]
    assert np.array_equal(load(again, k_turn).kv, kv_turn)
    again.delete(k_turn)
    assert again.flush(10) and not list(again.root.glob("*/*.*")) and again.used_bytes == 0


def test_prefixes_with_the_same_whole_blocks_share_them(tmp_path):
    kv = kv_for(8, 12)
    tier = tier_at(tmp_path)
    store(tier, "", tuple(range(33)), kv)
    gathered = []
    key = tier.write("", tuple(range(35)), 300.0, time.time() + DAY, lambda first: gathered.append(first))
    assert isinstance(settle(tier, 1)[0], Written)
    assert gathered == [] and tier.num_segments == 1 and tier.num_entries == 2
    assert np.array_equal(load(tier, key).kv, kv)


def test_a_failed_write_leaves_the_next_prefix_whole(tmp_path):
    gate = threading.Event()

    def broken(first: int) -> np.ndarray:
        gate.wait(10)
        raise RuntimeError("the blocks went away")

    tier = tier_at(tmp_path)
    doc = tier.write("", tuple(range(16)), 300.0, time.time() + DAY, broken)
    kv, asked = kv_for(6, 13), []
    # queued while the first write is under way: its blocks were to come from that one
    turn = tier.write("", tuple(range(24)), 300.0, time.time() + DAY, lambda first: (asked.append(first), kv[:, :, first:])[1])
    gate.set()
    done = settle(tier, 2)
    assert isinstance(done[0], WriteFailed) and done[0].key == doc and done[1] == Written(turn)
    assert asked == [0] and tier.num_segments == 1
    assert np.array_equal(load(tier, turn).kv, kv)
    assert [e.tokens for e in tier_at(tmp_path).scan()] == [tuple(range(24))]


def test_segments_no_pin_uses_are_deleted_at_start(tmp_path):
    tier = tier_at(tmp_path)
    store(tier, "", tuple(range(16)), kv_for(4, 14))
    store(tier, "", tuple(range(24)), kv_for(6, 14))
    short, long_ = sorted(tier.root.glob("*/*.pin"), key=lambda p: p.stat().st_size)
    long_.unlink()  # a crash after the longer prefix's blocks were written, before its pin
    assert [e.tokens for e in tier_at(tmp_path).scan()] == [tuple(range(16))]
    assert len(list(tier.root.glob("*/*.seg"))) == 1
    short.unlink()
    assert tier_at(tmp_path).scan() == [] and not list(tier.root.glob("*/*.*"))


def test_a_chain_missing_a_segment_is_dropped_at_start(tmp_path, caplog):
    tier = tier_at(tmp_path)
    store(tier, "", tuple(range(16)), kv_for(4, 15))
    store(tier, "", tuple(range(24)), kv_for(6, 15))
    [first] = [p for p in tier.root.glob("*/*.seg") if p.stat().st_size > tier.entry_bytes(3)]  # blocks 0-3
    first.unlink()
    assert tier_at(tmp_path).scan() == [] and "missing" in caplog.text
    assert not list(tier.root.glob("*/*.*"))


def test_blocks_only_a_failed_write_still_used_are_deleted_with_it(tmp_path):
    gate = threading.Event()

    def broken(first: int) -> np.ndarray:
        gate.wait(10)
        raise RuntimeError("the blocks went away")

    tier = tier_at(tmp_path)
    doc = store(tier, "", tuple(range(16)), kv_for(4, 16))
    tier.write("", tuple(range(24)), 300.0, time.time() + DAY, broken)  # builds on doc's blocks
    kv = kv_for(8, 17)
    turn = tier.write("", tuple(range(32)), 300.0, time.time() + DAY, lambda first: kv[:, :, first:])
    tier.delete(doc)  # now only the failing write uses doc's blocks
    gate.set()
    assert [type(d) for d in settle(tier, 2)] == [WriteFailed, Written]
    assert tier.flush(10) and tier.num_segments == 1 and len(list(tier.root.glob("*/*.seg"))) == 1
    assert np.array_equal(load(tier, turn).kv, kv)
