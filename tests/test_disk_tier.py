"""The disk tier's files: round trip, integrity, isolation, quota, expiry, crash safety."""
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from preheat.engine.disk_tier import (DiskTier, Evicted, Loaded, LoadFailed, WriteFailed, Written,
                                      cache_fingerprint, prefix_key)

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
    key = tier.write(ns, tokens, 300.0, time.time() + DAY if expiry is None else expiry, lambda: kv)
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
    assert len(list(later.root.glob("*/*.kv"))) == 1


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def damage_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


@pytest.mark.parametrize("damage", [damage_truncate, damage_flip, damage_garbage])
def test_damaged_files_are_dropped_never_served(tmp_path, damage, caplog):
    tier = tier_at(tmp_path)
    key = store(tier, "", tuple(range(8)), kv_for(2, 5))
    [path] = tier.root.glob("*/*.kv")
    damage(path)
    if damage is damage_flip:  # the header still reads: found at start, caught on the read
        assert len(tier_at(tmp_path).scan()) == 1
        failed = load(tier, key)
        assert isinstance(failed, LoadFailed) and "checksum" in failed.reason
    else:
        assert tier_at(tmp_path).scan() == []
    assert not path.exists() and "dropping cache file" in caplog.text


def test_files_of_another_configuration_are_never_read(tmp_path):
    store(tier_at(tmp_path), "", tuple(range(8)), kv_for(2, 6))
    other_fp = cache_fingerprint(model="m2", kv_dtype="float16", block_size=4)
    other = tier_at(tmp_path, fingerprint=other_fp)
    assert other.scan() == []  # its own folder: the first model's files are not even seen
    # a file copied into the other configuration's folder is detected by its header
    [src] = tier_at(tmp_path).root.glob("*/*.kv")
    dest = other.root / src.parent.name / src.name
    dest.parent.mkdir(parents=True)
    dest.write_bytes(src.read_bytes())
    assert tier_at(tmp_path, fingerprint=other_fp).scan() == [] and not dest.exists()


def test_tenants_are_kept_apart(tmp_path):
    tokens = tuple(range(8))
    tier = tier_at(tmp_path)
    key_a = store(tier, "alice", tokens, kv_for(2, 7))
    key_b = store(tier, "bob", tokens, kv_for(2, 8))
    assert key_a != key_b and tier.num_entries == 2
    [path_a] = tier.root.glob(f"*/{key_a}.kv")
    [path_b] = tier.root.glob(f"*/{key_b}.kv")
    assert path_a.parent != path_b.parent
    # bob's file moved under alice's name is refused: the entry says whose it is
    path_b.replace(path_a)
    assert {e.namespace for e in tier_at(tmp_path).scan()} == set()


def test_quota_drops_least_recently_used_first_then_refuses(tmp_path):
    one = tier_at(tmp_path).entry_bytes(2)
    tier = tier_at(tmp_path, quota=int(one * 2.5))
    k1 = store(tier, "", (1,) * 8, kv_for(2, 1))
    k2 = store(tier, "", (2,) * 8, kv_for(2, 2))
    tier.refresh(k1, time.time() + DAY)  # k1 used since: k2 is the least recently used
    tier.write("", (3,) * 8, 300.0, time.time() + DAY, lambda: kv_for(2, 3))
    done = settle(tier, 2)
    assert Evicted(k2) in done and any(isinstance(d, Written) for d in done)
    assert tier.num_entries == 2 and tier.used_bytes <= tier.quota_bytes
    assert isinstance(load(tier, k1), Loaded)
    tier.write("", (4,) * 8, 300.0, time.time() + DAY, lambda: kv_for(8, 4))  # larger than the quota
    [refused] = settle(tier, 1)
    assert isinstance(refused, WriteFailed) and "quota" in refused.reason and tier.num_entries == 2


def _write_forever(root: str) -> None:
    tier = tier_at(Path(root))
    kv = kv_for(32768, 9)  # 32 MiB: a write takes long enough to be killed in the middle
    for i in range(10_000):
        tier.write("", (i,) * 8, 300.0, time.time() + DAY, lambda: kv)
        tier.flush(60)


def test_a_crash_mid_write_leaves_no_entry_that_loads(tmp_path):
    child = multiprocessing.get_context("spawn").Process(target=_write_forever, args=(str(tmp_path),))
    child.start()
    root = tier_at(tmp_path).root
    deadline = time.monotonic() + 120
    # kill it while its second file is being written
    while not (list(root.glob("*/*.kv")) and list(root.glob("*/.*.tmp"))):
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
