"""The disk tier: pinned prefixes' KV blocks as files, so the cache outlives RAM and restarts.

Prefixes that share a start share its blocks on disk, as they do in RAM. KV lives in
*segments*: a segment holds a run of whole blocks and names the segment before it, so a
chain of segments from block 0 is a prefix's KV. A *pin* file names one pinned prefix
(namespace, all its tokens, TTL, expiry) and the last segment of its chain. Pinning a
prefix that extends one already on disk (a conversation whose breakpoint moves forward
each turn, or tenants' questions after one system prompt) writes only the blocks past the
longest segment chain it starts with, and a pin file. The files' bytes are
``disk_format.py``'s. A segment's key is the hash of its namespace and every token
through its last block; reading a chain back checks each link's key against the tokens
before it. The fingerprint names the model file, weight format, KV dtype and block size,
so a server never reads KV another configuration wrote. A truncated, corrupted or foreign
file is dropped, never served. A segment is written before the pin that names it, so a
crash mid-write leaves nothing that loads. A hit rewrites the small pin file with the new
expiry, never the KV.

A segment stays while a pin or a later segment uses it. Files are written and read on two
threads of their own; the engine thread only queues jobs (and keeps the bookkeeping, under
a lock) and drains ``completions()``. Over its byte quota the tier deletes the least
recently used pins first, and with them the segments nothing else uses; a prefix larger
than the whole quota is refused.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from preheat.engine.kv.disk_format import (LOAD_ERRORS, PIN_SUFFIX, SEGMENT_SUFFIX, CacheFiles,
                                           CorruptEntry, block_keys, cache_dir, entry_path, file_size,
                                           namespace_dir, prefix_key, write_file)

log = logging.getLogger(__name__)


# ---- what the tier reports back ------------------------------------------------------


@dataclass(frozen=True)
class StoredPrefix:
    """A pinned prefix found on disk at start (its KV is read only on a hit)."""

    namespace: str
    tokens: tuple[int, ...]
    ttl: float
    expiry: float  # wall clock


@dataclass(frozen=True)
class Written:
    key: str


@dataclass(frozen=True)
class WriteFailed:
    key: str
    reason: str


@dataclass(frozen=True)
class Evicted:
    """Deleted to keep the tier within its quota."""

    key: str


@dataclass(frozen=True)
class Loaded:
    key: str
    kv: np.ndarray  # uint8 [layers, 2, blocks, *block_shape]


@dataclass(frozen=True)
class LoadFailed:
    key: str
    reason: str


Completion = Written | WriteFailed | Evicted | Loaded | LoadFailed


class _Refused(Exception):
    """A write the quota cannot take."""


# ---- bookkeeping ----------------------------------------------------------------------


@dataclass(eq=False)
class _Segment:
    key: str
    path: Path
    parent: _Segment | None
    first_block: int  # its blocks are [first_block, end_block) of the prefix
    end_block: int
    refs: int = 0  # pins whose last segment it is, and segments that follow it
    nbytes: int = 0  # on disk; 0 until written
    state: str = "writing"  # "writing", "done" or "failed"

    def chain(self) -> list[_Segment]:
        """The segments from block 0 through this one."""
        out, seg = [], self
        while seg is not None:
            out.append(seg)
            seg = seg.parent
        return out[::-1]


@dataclass(eq=False)
class _Pin:
    key: str
    path: Path
    namespace: str
    tokens: tuple[int, ...]
    ttl: float
    expiry: float  # wall clock
    tip: _Segment | None  # None: the prefix has no whole block
    last_used: float
    nbytes: int = 0  # on disk; 0 until written
    complete: bool = False


@dataclass
class _Write:
    """A queued write: the pin, and the segment it adds (None when its chain exists)."""

    pin: _Pin
    segment: _Segment | None
    gather: Callable[[int], np.ndarray] = field(repr=False)


class DiskTier:
    """Files of pinned prefixes for one cache configuration (``fingerprint``).

    ``block_shape`` is the byte shape of one block of one layer's K or V
    ``(block_size, kv_heads, head_dim * element size)``; ``num_layers`` the model's.
    """

    def __init__(self, root: Path, fingerprint: str, quota_bytes: int, num_layers: int,
                 block_shape: tuple[int, int, int], *, wall_clock: Callable[[], float] = time.time):
        self.root = cache_dir(root, fingerprint)
        self.quota_bytes = quota_bytes
        self.num_layers = num_layers
        self.block_shape = tuple(block_shape)
        self.block_size = self.block_shape[0]
        self.files = CacheFiles(fingerprint, num_layers, self.block_shape)
        self.wall_clock = wall_clock
        self._lock = threading.Lock()  # guards the bookkeeping below, used by every thread
        self._segments: dict[str, _Segment] = {}
        self._pins: dict[str, _Pin] = {}
        self.used_bytes = 0  # files written and not yet deleted
        self._done: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        self._ready = threading.Condition()
        self._writes: queue.Queue = queue.Queue()
        self._reads: queue.Queue = queue.Queue()
        # Writes use idle CPU only: on a machine whose cores all run the engine's thread team,
        # a writer taking one of them made every decode step wait on it (8x slower, measured).
        # Reads run at normal priority: a request is waiting for them.
        self._threads = [threading.Thread(target=self._serve, args=(q, idle), daemon=True, name=name)
                         for q, idle, name in ((self._writes, True, "kv-disk-writer"),
                                               (self._reads, False, "kv-disk-reader"))]
        for t in self._threads:
            t.start()

    # ---- engine thread -------------------------------------------------------------

    @property
    def num_entries(self) -> int:
        """Pinned prefixes whose files are complete."""
        with self._lock:
            return sum(p.complete for p in self._pins.values())

    @property
    def num_segments(self) -> int:
        with self._lock:
            return sum(s.state == "done" for s in self._segments.values())

    def entry_bytes(self, num_blocks: int) -> int:
        """At most what a prefix of ``num_blocks`` blocks takes on disk (its KV)."""
        return self.num_layers * 2 * num_blocks * int(np.prod(self.block_shape))

    def write(self, namespace: str, tokens: tuple[int, ...], ttl: float, expiry: float,
              gather: Callable[[int], np.ndarray]) -> str:
        """Queue a write of a pinned prefix. ``gather(first)`` (called on the writer thread)
        returns the KV bytes of its blocks from block ``first`` on, ``[layers, 2, blocks,
        *block_shape]``: the blocks before it are on disk already. Returns the pin's key."""
        key = prefix_key(namespace, tokens)
        keys = block_keys(namespace, tokens, self.block_size)
        with self._lock:
            tip, segment = self._tip_for(namespace, keys)
            unlink = self._drop_pin(key)  # a pin written again replaces the old one
            path = entry_path(self.root, namespace, key, PIN_SUFFIX)
            pin = _Pin(key, path, namespace, tuple(tokens), ttl, expiry, tip, last_used=self.wall_clock())
            self._pins[key] = pin
        self._writes.put((self._unlink_all, (unlink,)))
        self._writes.put((self._write, (_Write(pin, segment, gather),)))
        return key

    def refresh(self, key: str, expiry: float) -> None:
        """Queue a new expiry (wall clock) for a stored pin."""
        self._writes.put((self._refresh, (key, expiry)))

    def delete(self, key: str) -> None:
        """Forget a pin now; its file, and segments nothing else uses, go on the writer thread."""
        with self._lock:
            unlink = self._drop_pin(key)
        self._writes.put((self._unlink_all, (unlink,)))

    def load(self, key: str) -> None:
        """Queue a read; a ``Loaded`` or ``LoadFailed`` completion follows."""
        self._reads.put((self._load, (key,)))

    def completions(self) -> list[Completion]:
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: float) -> None:
        """Sleep until a completion is ready (or ``timeout`` s): an engine waiting on a read
        must not spin."""
        with self._ready:
            if self._done.empty():
                self._ready.wait(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait for queued writes to finish (at shutdown); False if they did not in time."""
        deadline = time.monotonic() + timeout
        while self._writes.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._writes.unfinished_tasks

    def close(self) -> None:
        """Stop the threads once the jobs already queued are done."""
        for jobs in (self._writes, self._reads):
            jobs.put((None, ()))

    # ---- bookkeeping (callers hold the lock) ------------------------------------------

    def _tip_for(self, namespace: str, keys: list[str]) -> tuple[_Segment | None, _Segment | None]:
        """The last segment of a prefix whose whole-block keys are ``keys``, referenced for
        its pin, and the new segment to write (None when the chain is on disk or queued)."""
        if not keys:
            return None, None
        tip = self._segments.get(keys[-1])
        if tip is not None and tip.state != "failed":
            tip.refs += 1
            return tip, None
        parent = next((s for k in reversed(keys[:-1])
                       if (s := self._segments.get(k)) is not None and s.state != "failed"), None)
        first = parent.end_block if parent is not None else 0
        if parent is not None:
            parent.refs += 1
        path = entry_path(self.root, namespace, keys[-1], SEGMENT_SUFFIX)
        tip = _Segment(keys[-1], path, parent, first, len(keys), refs=1)
        self._segments[tip.key] = tip
        return tip, tip

    def _drop_pin(self, key: str) -> list[Path]:
        """Forget pin ``key``; returns the files that go with it."""
        pin = self._pins.pop(key, None)
        if pin is None:
            return []
        self.used_bytes -= pin.nbytes
        return [pin.path, *self._release(pin.tip)]

    def _release(self, segment: _Segment | None) -> list[Path]:
        """Drop one reference to ``segment``; returns the files of segments nothing uses now."""
        paths = []
        while segment is not None:
            segment.refs -= 1
            if segment.refs > 0:
                break
            if self._segments.get(segment.key) is segment:
                del self._segments[segment.key]
            self.used_bytes -= segment.nbytes
            if segment.nbytes:
                paths.append(segment.path)
            segment = segment.parent
        return paths

    # ---- worker threads ------------------------------------------------------------

    def _serve(self, jobs: queue.Queue, idle: bool) -> None:
        if idle:
            _run_on_idle_cpu()
        while True:
            job, args = jobs.get()
            if job is None:
                jobs.task_done()
                return
            try:
                job(*args)
            except Exception:  # a bad job must not end the tier
                log.exception("disk tier job %s failed", job.__name__)
            finally:
                jobs.task_done()

    def _post(self, completion: Completion) -> None:
        self._done.put(completion)
        with self._ready:
            self._ready.notify_all()

    def _unlink_all(self, paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    def _write(self, job: _Write) -> None:
        pin = job.pin
        try:
            failure = (self._write_segment(job) if job.segment is not None else None) or self._write_pin(pin)
        except Exception as err:  # the quota, gather or the file system: the pin is not stored
            if not isinstance(err, _Refused):
                log.exception("writing a pinned prefix to disk failed")
            failure = str(err) or type(err).__name__
            with self._lock:
                if job.segment is not None and job.segment.state == "writing":
                    job.segment.state = "failed"  # what was queued after it must not build on it
        if failure is None:
            self._post(Written(pin.key))
            return
        self._discard(pin)
        self._post(WriteFailed(pin.key, failure))

    def _discard(self, pin: _Pin) -> None:
        """Drop ``pin`` (unless it was replaced meanwhile) and delete what only it used."""
        with self._lock:
            unlink = self._drop_pin(pin.key) if self._pins.get(pin.key) is pin else []
        self._unlink_all(unlink)

    def _write_segment(self, job: _Write) -> str | None:
        """Write the job's new segment (while any pin needs it); a reason if it fails."""
        seg, unlink = job.segment, []
        with self._lock:
            if self._segments.get(seg.key) is not seg:
                return "deleted before it was written"
            if seg.parent is not None and seg.parent.state == "failed":
                # the blocks before it never reached the disk: this segment holds them too
                unlink = self._release(seg.parent)
                seg.parent, seg.first_block = None, 0
            chain_bytes = sum(s.nbytes for s in seg.chain()[:-1])
        self._unlink_all(unlink)  # runs before the failed one that only it still used
        kv = np.ascontiguousarray(job.gather(seg.first_block))
        if kv.shape[2] != seg.end_block - seg.first_block:
            raise ValueError(f"gather gave {kv.shape[2]} blocks for {seg.end_block - seg.first_block}")
        bs, parent = self.block_size, seg.parent.key if seg.parent is not None else None
        tokens = job.pin.tokens[seg.first_block * bs: seg.end_block * bs]
        parts = self.files.segment_parts(job.pin.namespace, parent, seg.first_block, tokens, kv)
        size = file_size(parts)
        if chain_bytes + size > self.quota_bytes:
            raise _Refused(f"{chain_bytes + size} bytes is more than the disk quota of {self.quota_bytes}")
        self._make_room(size, keep=job.pin)
        write_file(seg.path, parts)
        with self._lock:
            seg.state = "done"
            if self._segments.get(seg.key) is seg:
                seg.nbytes = size
                self.used_bytes += size
                return None
        seg.path.unlink(missing_ok=True)  # every pin using it went while it was written
        return None

    def _write_pin(self, pin: _Pin) -> str | None:
        with self._lock:
            if self._pins.get(pin.key) is not pin:
                return "deleted before it was written"
            if pin.tip is not None and pin.tip.state != "done":
                return "its blocks could not be written"
            parts = self.files.pin_parts(pin.namespace, pin.tokens, pin.ttl, pin.expiry)
        size = file_size(parts)
        self._make_room(size, keep=pin)
        write_file(pin.path, parts)
        with self._lock:
            if self._pins.get(pin.key) is not pin:  # deleted while written: the delete unlinks it
                return "deleted before it was written"
            pin.nbytes, pin.complete = size, True
            self.used_bytes += size
        return None

    def _make_room(self, size: int, keep: _Pin) -> None:
        """Delete least recently used pins (and segments nothing else uses) until ``size``
        more bytes fit the quota, or no other complete pin is left."""
        while True:
            with self._lock:
                if self.used_bytes + size <= self.quota_bytes:
                    return
                victims = [p for p in self._pins.values() if p.complete and p is not keep]
                if not victims:
                    return
                victim = min(victims, key=lambda p: p.last_used)
                unlink = self._drop_pin(victim.key)
            self._unlink_all(unlink)
            self._post(Evicted(victim.key))

    def _refresh(self, key: str, expiry: float) -> None:
        with self._lock:
            pin = self._pins.get(key)
            if pin is None or not pin.complete:
                return
            pin.last_used = self.wall_clock()
            pin.expiry = expiry
            parts = self.files.pin_parts(pin.namespace, pin.tokens, pin.ttl, pin.expiry)
        try:
            write_file(pin.path, parts)
        except OSError as err:
            log.warning("could not record a cache entry's new expiry: %s", err)

    def _load(self, key: str) -> None:
        with self._lock:
            pin = self._pins.get(key)
            chain = pin.tip.chain() if pin is not None and pin.tip is not None else []
        if pin is None or not pin.complete:
            self._post(LoadFailed(key, "no longer on disk"))
            return
        try:
            kv = self._read_chain(pin, chain)
        except LOAD_ERRORS as err:
            log.warning("dropping cache file of %s: %s", key, err)
            self._discard(pin)
            self._post(LoadFailed(key, str(err)))
            return
        self._post(Loaded(key, kv))

    def _read_chain(self, pin: _Pin, chain: list[_Segment]) -> np.ndarray:
        """The KV of ``pin``'s blocks, each segment's crc and key checked."""
        parts = []
        keys = block_keys(pin.namespace, pin.tokens, self.block_size)
        bs = self.block_size
        for seg in chain:
            header, tokens, kv = self.files.read_segment(seg.path)
            if (header["first_block"] != seg.first_block or keys[seg.end_block - 1] != seg.key
                    or tokens != pin.tokens[seg.first_block * bs: seg.end_block * bs]):
                raise CorruptEntry(f"{seg.path.name} is not the segment its name says")
            parts.append(kv)
        if not parts:
            return np.zeros((self.num_layers, 2, 0, *self.block_shape), dtype=np.uint8)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)

    # ---- start ---------------------------------------------------------------------

    def scan(self) -> list[StoredPrefix]:
        """Pins an earlier run left that are whole and unexpired, with their segments; drops
        the rest, and segments no pin uses."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path in self.root.glob("*/.*"):  # a write that never finished
            path.unlink(missing_ok=True)
        heads = dict(self._scan_segments())
        now = self.wall_clock()
        found = []
        for path in sorted(self.root.glob(f"*/*{PIN_SUFFIX}")):
            try:
                pin = self._scan_pin(path, heads, now)
            except LOAD_ERRORS as err:
                log.warning("dropping cache file %s: %s", path, err)
                path.unlink(missing_ok=True)
                continue
            if pin is None:  # expired
                path.unlink(missing_ok=True)
                continue
            with self._lock:
                self._pins[pin.key] = pin
                self.used_bytes += pin.nbytes
            found.append(StoredPrefix(pin.namespace, pin.tokens, pin.ttl, pin.expiry))
        with self._lock:
            for key, (path, *_) in heads.items():
                if key not in self._segments:  # no pin uses it: a crash between its write and its pin's
                    path.unlink(missing_ok=True)
        return found

    def _scan_segments(self) -> Iterator[tuple[str, tuple[Path, dict, tuple[int, ...], int]]]:
        """Segment files that read (header, tokens, size checked; not the crc), by key."""
        for path in self.root.glob(f"*/*{SEGMENT_SUFFIX}"):
            try:
                header, tokens = self.files.segment_head(path)
            except LOAD_ERRORS as err:
                log.warning("dropping cache file %s: %s", path, err)
                path.unlink(missing_ok=True)
                continue
            yield path.stem, (path, header, tokens, path.stat().st_size)

    def _scan_pin(self, path: Path, heads: dict, now: float) -> _Pin | None:
        """A pin file read whole, its chain of segments linked and checked against its
        tokens; None when it has expired."""
        data = memoryview(path.read_bytes())
        header, tokens = self.files.read_pin(data)
        if header["expiry"] <= now:
            return None
        namespace = header["namespace"]
        if path.parent.name != namespace_dir(namespace) or path.stem != prefix_key(namespace, tokens):
            raise CorruptEntry("it is not where its entry belongs")
        keys = block_keys(namespace, tokens, self.block_size)
        tip = self._link(keys, len(keys), namespace, heads) if keys else None
        with self._lock:
            if tip is not None:
                tip.refs += 1
        return _Pin(path.stem, path, namespace, tokens, header["ttl"], header["expiry"], tip,
                    last_used=header["expiry"] - header["ttl"], nbytes=len(data), complete=True)

    def _link(self, keys: list[str], end: int, namespace: str, heads: dict) -> _Segment:
        """The segment ending after block ``end`` of a prefix with whole-block keys ``keys``,
        and those before it, registered (found on disk at start)."""
        key = keys[end - 1]
        with self._lock:
            known = self._segments.get(key)
        if known is not None:
            return known
        if key not in heads:
            raise CorruptEntry(f"a segment of it is missing ({key})")
        seg_path, header, ids, size = heads[key]
        first = header["first_block"]
        if seg_path.parent.name != namespace_dir(namespace) or header["namespace"] != namespace \
                or first + len(ids) // self.block_size != end or first >= end:
            raise CorruptEntry(f"segment {key} does not continue its prefix")
        parent_key = header["parent"]
        if (first == 0) != (parent_key is None) or (first and keys[first - 1] != parent_key):
            raise CorruptEntry(f"segment {key} names the wrong segment before it")
        parent = self._link(keys, first, namespace, heads) if first else None
        with self._lock:
            seg = _Segment(key, seg_path, parent, first, end, nbytes=size, state="done")
            if parent is not None:
                parent.refs += 1
            self._segments[key] = seg
            self.used_bytes += size
        return seg


# ---- threads -------------------------------------------------------------------------

def _run_on_idle_cpu() -> None:
    """Schedule the calling thread only when a core has nothing else to run (Linux), else
    at the lowest priority the OS gives."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            log.info("the disk tier's writer runs at normal priority")
