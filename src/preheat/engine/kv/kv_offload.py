"""Pinned prefixes between the RAM pool and the disk tier.

Write-through: every pinned prefix is copied to disk as soon as it is pinned, on
the tier's writer thread (the engine step only queues the job and holds the
blocks until the copy is done). So RAM can let an entry go at any moment, and
every entry survives a restart. When pinned blocks outgrow their share of the
pool, the least recently used entries that are safely on disk leave RAM: their
blocks become ordinary cache, evicted when the pool needs them.

A hit on an entry that RAM no longer holds reads its file on the tier's reader
thread while the request waits in the queue (other requests run); the engine
thread then copies the blocks into the pool, puts them back in the radix tree
and pins them again. Usage is decided before any of this (the entry is alive,
wherever it is), so every tier reports the same.

With sliding-window layers, a file holds their KV only for the window before its prefix's
end (zeros elsewhere: nothing resuming there reads it), and a read back restores the
window slots of that window alone.

Runs on the engine thread, except ``hit`` (a listener call that only queues a job).
"""
from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from preheat.config import EngineConfig
from preheat.engine.kv.block_pool import BlockPool
from preheat.engine.kv.disk_format import cache_fingerprint, prefix_key
from preheat.engine.kv.disk_tier import DiskTier, Evicted, Loaded, LoadFailed, WriteFailed, Written
from preheat.engine.kv.kv_budget import disk_quota
from preheat.engine.kv.pin_table import PinEntry
from preheat.engine.kv.radix_cache import RadixCache
from preheat.engine.kv.window_slots import WindowSlots
from preheat.engine.model_runner import ModelRunner
from preheat.engine.sequence import Sequence, SeqStatus
from preheat.cache_dir import resolve_cache_dir
from preheat.models.decoder import DecoderModel

log = logging.getLogger(__name__)


class _Install(enum.Enum):
    """How putting a loaded prefix back into the pool went."""

    DONE = "done"
    UNNEEDED = "unneeded"  # expired, dropped, or its requests ended meanwhile
    WAIT = "wait"  # no room yet: try again next step
    NO_ROOM = "no room"  # nor will there be: its requests recompute the prefix


def open_disk_tier(config: EngineConfig, model: DecoderModel, runner: ModelRunner, radix: RadixCache,
                   pool: BlockPool, model_digest: str, clock: Callable[[], float]) -> KVOffload | None:
    """The disk tier ``config`` asks for, with the entries an earlier run left restored;
    None when its quota is 0."""
    root = config.kv_disk_dir or resolve_cache_dir(config.cache_dir) / "kv"
    quota = disk_quota(root, config.kv_disk_bytes)
    if quota <= 0:
        log.info("disk tier: off")
        return None
    kv_cache = runner.kv_cache
    fingerprint = cache_fingerprint(model=model_digest, weight_format=model.weight_format,
                                    dtype=model.dtype, kv_dtype=kv_cache.dtype,
                                    block_size=config.block_size, device=model.device.type)
    cfg = model.cfg
    block_shape = (config.block_size, cfg.num_kv_heads, cfg.head_dim * kv_cache.element_size())
    tier = DiskTier(root, fingerprint, quota, cfg.num_layers, block_shape)
    store = LayerStore(kv_cache, runner.layout.places(), runner.window_cache, runner.slots)
    offload = KVOffload(radix, pool, store, tier, clock=clock)
    restored = offload.restore()
    log.info("disk tier: %s, quota %.1f GiB; %d pinned prefixes restored (%.2f GiB)",
             tier.root, quota / 2**30, restored, tier.used_bytes / 2**30)
    return offload


class LayerStore:
    """The KV bytes of blocks as files hold them, ``[layers, 2, blocks, block_size, heads,
    head_dim * elem]`` in the model's layer order, read from and written to the caches
    where the runner keeps them (a sliding-window layer's in its window slots)."""

    def __init__(self, kv_cache: torch.Tensor, places: list[tuple[bool, int]],
                 window_cache: torch.Tensor | None = None, slots: WindowSlots | None = None):
        self._kv = kv_cache.view(torch.uint8)
        self._window = window_cache.view(torch.uint8) if window_cache is not None else None
        self.slots = slots
        self._places = places
        # the file's layers that each cache holds, in its order
        self._full = [i for i, (in_window, _) in enumerate(places) if not in_window]
        self._local = [i for i, (in_window, _) in enumerate(places) if in_window]
        # copies into the pool move the widest words the row allows (8 bytes: 5x faster than bytes)
        self._word = next(d for d in (torch.int64, torch.int32, torch.int16, torch.uint8)
                          if self._kv.shape[-1] % d.itemsize == 0)

    def gather(self, blocks: list[int], windowed: set[int] | frozenset[int] = frozenset()) -> np.ndarray:
        """The KV bytes of ``blocks`` (writer thread: the blocks are full, so nobody writes
        them); sliding-window layers' only for the blocks in ``windowed``, zeros elsewhere."""
        full = self._take(self._kv, blocks)
        if self._window is None:
            return full
        out = np.zeros((len(self._places), *full.shape[1:]), dtype=np.uint8)
        at = [i for i, b in enumerate(blocks) if b in windowed]
        local = self._take(self._window, self.slots.slots_of([blocks[i] for i in at]))
        for layer, (in_window, j) in enumerate(self._places):
            if not in_window:
                out[layer] = full[j]
            elif at:
                out[layer][:, at] = local[j]
        return out

    def _take(self, cache: torch.Tensor, index: list[int]) -> np.ndarray:
        if cache.device.type != "cpu":
            return cache.index_select(2, torch.tensor(index, dtype=torch.long, device=cache.device)).cpu().numpy()
        # numpy, not torch: a torch op here would start a second thread team beside the engine's.
        # One call rather than a Python loop over blocks: this thread runs on idle CPU only,
        # so the less it holds the GIL between copies, the less the engine thread can wait on it.
        return np.take(cache.numpy(), index, axis=2)

    def copy_in(self, blocks: list[int], kv: np.ndarray) -> None:
        """Write the global layers' KV bytes read from disk (``[layers, 2, len(blocks), ...]``)
        into ``blocks``."""
        self._put(self._kv, blocks, kv if self._window is None else kv[self._full])

    def copy_in_window(self, blocks: list[int], kv: np.ndarray) -> None:
        """Write the sliding-window layers' KV bytes of ``blocks`` (which hold window slots)."""
        self._put(self._window, self.slots.slots_of(blocks), kv[self._local])

    def _put(self, cache: torch.Tensor, index: list[int], kv: np.ndarray) -> None:
        where = torch.tensor(index, dtype=torch.long, device=cache.device)
        src = torch.from_numpy(np.ascontiguousarray(kv)).to(cache.device)
        cache.view(self._word).index_copy_(2, where, src.view(self._word))


class KVOffload:
    def __init__(self, radix: RadixCache, pool: BlockPool, store: LayerStore, tier: DiskTier,
                 *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.radix = radix
        self.pins = radix.pins
        self.pool = pool
        self.tier = tier
        self.clock = clock
        self.wall_clock = wall_clock
        self.store = store
        self.slots = store.slots
        self._entries: dict[str, PinEntry] = {}  # disk key -> entry, for entries on or going to disk
        # per disk key, the writes under way (FIFO, as the tier does them): the entry, the
        # blocks held until its write is done, and those whose window slots it holds
        self._held: dict[str, deque[tuple[PinEntry, list[int], list[int]]]] = {}
        self._waiting: dict[str, list[Sequence]] = {}  # sequences waiting for a read
        self._loaded: dict[str, np.ndarray] = {}  # reads done, not yet in the pool
        self.num_reads = 0  # prefixes read back from disk into the pool
        self.pins.listener = self

    # ---- start and stop -------------------------------------------------------------

    def restore(self) -> int:
        """Register the unexpired entries an earlier run left on disk; returns how many."""
        offset = self.clock() - self.wall_clock()
        stored = self.tier.scan()
        for sp in stored:
            entry = PinEntry(sp.namespace, sp.tokens, sp.ttl, sp.expiry + offset, on_disk=True)
            self.pins.restore(entry)
            self._entries[prefix_key(sp.namespace, sp.tokens)] = entry
        return len(stored)

    def close(self, timeout: float) -> None:
        if not self.tier.flush(timeout):
            log.warning("shutting down before every pinned prefix reached the disk")
        self.tier.close()

    # ---- pin listener ---------------------------------------------------------------

    def pinned(self, entry: PinEntry, blocks: list[int]) -> None:
        key = prefix_key(entry.namespace, entry.tokens)
        self._entries[key] = entry
        if entry.on_disk:
            self.tier.refresh(key, self._wall(entry.expiry))
        elif not entry.writing:
            entry.writing = True
            self.pool.incref(blocks)
            windowed = self._window_of(blocks)
            self._held.setdefault(key, deque()).append((entry, blocks, windowed))
            self.tier.write(entry.namespace, entry.tokens, entry.ttl, self._wall(entry.expiry),
                            lambda first: self.store.gather(blocks[first:], set(windowed)))

    def hit(self, entry: PinEntry) -> None:
        if entry.on_disk:
            self.tier.refresh(prefix_key(entry.namespace, entry.tokens), self._wall(entry.expiry))

    def dropped(self, entries: list[PinEntry]) -> None:
        for entry in entries:
            key = prefix_key(entry.namespace, entry.tokens)
            if self._entries.get(key) is entry:
                del self._entries[key]
                self.tier.delete(key)  # queued after any write of it, so it removes that too

    # ---- engine thread --------------------------------------------------------------

    def can_pin(self, new_blocks: int) -> bool:
        """A new pinned prefix of ``new_blocks`` blocks fits: older entries can leave RAM for disk."""
        return (new_blocks <= self.pins.max_pinned_blocks
                and self.tier.entry_bytes(new_blocks) <= self.tier.quota_bytes)

    def on_admit(self, seq: Sequence) -> None:
        """``seq`` hit ``seq.pinned_hit``: if RAM lost that entry's blocks, read them back first."""
        entry = seq.pinned_hit
        if entry is None or entry.in_ram or not entry.alive(self.clock()):
            return
        if self.radix.cached_len(entry.namespace, entry.tokens) >= entry.aligned(self.pool.block_size):
            self.radix.repin(entry)  # its blocks were still cached
            return
        key = prefix_key(entry.namespace, entry.tokens)
        if not entry.on_disk or self._entries.get(key) is not entry:
            return
        seq.pending_load = key
        if key not in self._waiting and key not in self._loaded:
            self.tier.load(key)
        self._waiting.setdefault(key, []).append(seq)

    def wait(self, timeout: float) -> None:
        self.tier.wait(timeout)

    def poll(self) -> None:
        """Once per step: take the tier's news, put loaded prefixes back, spill over budget.

        A read that finds no room waits for blocks to come free; when the tree alone holds
        blocks (no sequence, no write), none will, and the read is given up: its requests
        recompute the prefix."""
        for done in self.tier.completions():
            if isinstance(done, Written | WriteFailed):
                self._written(done)
            elif isinstance(done, Evicted):
                self._lost(done.key)
            elif isinstance(done, Loaded):
                self._loaded[done.key] = done.kv
            elif isinstance(done, LoadFailed):
                log.warning("a cached prefix could not be read back (%s); recomputing it", done.reason)
                self._lost(done.key)
                self._release_waiters(done.key)
        installed = False
        for key in list(self._loaded):
            # After one install, the next may not take RAM from pins: it could take the one
            # just installed, before its requests hold its blocks (they do from this step on).
            outcome = self._install(key, may_release=not installed)
            if outcome is _Install.WAIT:
                continue
            installed |= outcome is _Install.DONE
            del self._loaded[key]
            self._release_waiters(key)
        self._spill()

    # ---- helpers --------------------------------------------------------------------

    def _written(self, done: Written | WriteFailed) -> None:
        held = self._held[done.key]
        entry, blocks, windowed = held.popleft()
        if windowed:
            self.slots.drop(windowed)
        self.pool.decref(blocks)
        if not held:
            del self._held[done.key]
        if self._entries.get(done.key) is not entry:  # dropped (and maybe pinned anew) since
            return
        entry.writing = False
        if isinstance(done, Written):
            entry.on_disk = True
            # hits while it was written moved its expiry past the one in the file
            self.tier.refresh(done.key, self._wall(entry.expiry))
        else:
            log.warning("a pinned prefix could not be written to disk: %s", done.reason)
            if not entry.in_ram:  # it had left RAM, counting on that copy
                self.pins.forget(entry)

    def _lost(self, key: str) -> None:
        """The disk copy of ``key`` is gone: an entry RAM does not hold goes with it."""
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.on_disk = False
        if not entry.in_ram and not entry.writing:
            self.pins.forget(entry)

    def _release_waiters(self, key: str) -> None:
        for seq in self._waiting.pop(key, []):
            seq.pending_load = None

    def _install(self, key: str, may_release: bool) -> _Install:
        """Copy a loaded prefix into free blocks, back into the tree, pinned."""
        entry = self._entries.get(key)
        if entry is None or not entry.alive(self.clock()) or all(
                s.status is SeqStatus.FINISHED for s in self._waiting.get(key, [])):
            return _Install.UNNEEDED
        kv = self._loaded[key]
        tokens = list(entry.tokens[: entry.aligned(self.pool.block_size)])
        cached = self._make_room(entry.namespace, tokens, kv.shape[2], may_release)
        if cached is None:
            if not may_release or self.pool.total_refs > self.radix.cached_blocks:
                return _Install.WAIT  # running requests or writes will give blocks back
            log.warning("no room to read a cached prefix back (%d blocks; %d free, the rest "
                        "pinned without a disk copy); recomputing it", kv.shape[2], self.pool.num_free)
            return _Install.NO_ROOM
        need = kv.shape[2] - len(cached)
        if need > 0:
            blocks = self.pool.allocate(need)
            self.store.copy_in(blocks, kv[:, :, len(cached):])
            self.radix.insert(entry.namespace, list(tokens), cached + blocks)
            self.pool.decref(blocks)  # the tree holds them now
            self.num_reads += 1
        if self.slots is not None and not self._install_window(entry.namespace, tokens, kv):
            return _Install.WAIT if may_release else _Install.NO_ROOM
        self.radix.repin(entry)
        return _Install.DONE

    def _window_of(self, blocks: list[int]) -> list[int]:
        """The blocks of a prefix's window whose slots a write of it holds (none without slots)."""
        if self.slots is None:
            return []
        window = [b for b in blocks[self.slots.first_needed(len(blocks) * self.pool.block_size):]
                  if self.slots.has(b)]
        self.slots.share(window)
        return window

    def _install_window(self, namespace: str, tokens: list[int], kv: np.ndarray) -> bool:
        """Give the window before ``tokens``' end (in the tree now) its slots and local KV."""
        blocks = self.radix.cached_blocks_of(namespace, tokens)
        first = self.slots.first_needed(len(tokens))
        missing = [i for i in range(first, len(blocks)) if not self.slots.has(blocks[i])]
        if len(missing) > self.slots.num_free:
            self.radix.evict_windows(len(missing) - self.slots.num_free)
        if len(missing) > self.slots.num_free:
            return False
        fresh = [blocks[i] for i in missing]
        self.slots.hold(fresh)
        self.store.copy_in_window(fresh, kv[:, :, missing])
        self.radix.keep_window(namespace, tokens)
        self.slots.drop(fresh)  # the tree's window holds them now
        return True

    def _make_room(self, namespace: str, tokens: list[int], num_blocks: int,
                   may_release: bool) -> list[int] | None:
        """The cached start of ``tokens`` and free blocks for the rest of its ``num_blocks``;
        None when no more can be freed. Evicts the cache, then (``may_release``) takes other
        pins that live on disk out of RAM: left to themselves they would hold their blocks
        for their whole TTL, and this read would wait for them all along."""
        while True:
            # look each time: evicting may take blocks of this very prefix that were cached
            cached = self.radix.match(namespace, tokens)
            short = num_blocks - len(cached) - self.pool.num_free
            if short <= 0:
                return cached
            if self.radix.evict(short) > 0:
                continue
            if not may_release or self.radix.release_pins(short, keep_undisked=True) == 0:
                return None

    def _spill(self) -> None:
        """Take the least recently used entries with a disk copy out of RAM until pins fit their share."""
        if self.pins.pinned_blocks <= self.pins.max_pinned_blocks:
            return
        now = self.clock()
        movable = sorted((e for e in self.pins.entries() if e.in_ram and e.on_disk and e.alive(now)),
                         key=lambda e: e.last_used)
        for entry in movable:
            if self.pins.pinned_blocks <= self.pins.max_pinned_blocks:
                break
            self.pins.unpin_ram(entry)

    def _wall(self, expiry: float) -> float:
        return expiry - self.clock() + self.wall_clock()
