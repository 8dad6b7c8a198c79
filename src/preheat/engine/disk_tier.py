"""The disk tier: pinned prefixes' KV blocks as files, so the cache outlives RAM and restarts.

One file per pinned prefix, under ``root/<fingerprint>/<namespace hash>/``. The
fingerprint names the model file, weight format, KV dtype and block size, so a
server never reads KV another configuration wrote. A file is:

    magic (8 bytes) | header length (u32) | header (JSON) | token ids (int32) | KV bytes | crc32

The crc covers everything before it: a truncated, corrupted or foreign file is
dropped, never served. Files are written to a temporary name and renamed, so a
crash mid-write leaves nothing that loads. A hit refreshes the entry's expiry in a
small ``.exp`` file beside it (also renamed into place) rather than rewriting KV.

Files are written and read on two threads of their own; the engine thread only
queues jobs and drains ``completions()``. Over its byte quota the tier deletes the
least recently used entries first; an entry larger than the whole quota is refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"PHKV\x00\x01\r\n"
FORMAT_VERSION = 1
_SUFFIX = ".kv"
_EXPIRY = struct.Struct("<dI")  # expiry (wall clock), crc32 of those 8 bytes


def prefix_key(namespace: str, tokens: tuple[int, ...]) -> str:
    """The file name (without suffix) of a namespace's pinned prefix."""
    h = hashlib.sha256(namespace.encode())
    h.update(np.asarray(tokens, dtype="<i4").tobytes())
    return h.hexdigest()[:40]


def namespace_dir(namespace: str) -> str:
    return hashlib.sha256(f"preheat-kv-namespace\0{namespace}".encode()).hexdigest()[:24]


# ---- what the tier reports back ------------------------------------------------------


@dataclass(frozen=True)
class StoredPrefix:
    """An entry found on disk at start (its KV is read only on a hit)."""

    namespace: str
    tokens: tuple[int, ...]
    ttl: float
    expiry: float  # wall clock
    nbytes: int


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


class CorruptEntry(Exception):
    pass


# ---- the tier -------------------------------------------------------------------------


@dataclass
class _File:
    path: Path
    nbytes: int
    last_used: float
    complete: bool = True  # False while its write is under way


class DiskTier:
    """Files of pinned prefixes for one cache configuration (``fingerprint``).

    ``block_shape`` is the byte shape of one block of one layer's K or V
    ``(block_size, kv_heads, head_dim * element size)``; ``num_layers`` the model's.
    """

    def __init__(self, root: Path, fingerprint: str, quota_bytes: int, num_layers: int,
                 block_shape: tuple[int, int, int], *, wall_clock: Callable[[], float] = time.time):
        self.root = Path(root) / fingerprint[:32]
        self.fingerprint = fingerprint
        self.quota_bytes = quota_bytes
        self.num_layers = num_layers
        self.block_shape = tuple(block_shape)
        self.wall_clock = wall_clock
        self._lock = threading.Lock()  # guards _files and used_bytes
        self._files: dict[str, _File] = {}
        self.used_bytes = 0
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
        """Entries whose file is complete."""
        with self._lock:
            return sum(f.complete for f in self._files.values())

    def scan(self) -> list[StoredPrefix]:
        """Entries left by an earlier run that are whole and unexpired; drops the rest."""
        self.root.mkdir(parents=True, exist_ok=True)
        now = self.wall_clock()
        found: list[StoredPrefix] = []
        for path in sorted(self.root.glob("*/*")):
            if path.name.startswith("."):  # a write that never finished
                path.unlink(missing_ok=True)
            elif path.suffix == _SUFFIX:
                entry = self._scan_one(path, now)
                if entry is not None:
                    found.append(entry)
        for path in self.root.glob(f"*/*.exp"):
            if not path.with_suffix(_SUFFIX).exists():
                path.unlink(missing_ok=True)
        return found

    def _scan_one(self, path: Path, now: float) -> StoredPrefix | None:
        try:
            header, tokens = _read_head(path)
            self._check_header(header, path)
            expiry = max(header["expiry"], _read_expiry(path.with_suffix(".exp")))
        except (OSError, CorruptEntry, KeyError, TypeError, ValueError) as err:
            log.warning("dropping cache file %s: %s", path, err)
            self._unlink(path)
            return None
        if expiry <= now:
            self._unlink(path)
            return None
        entry = StoredPrefix(header["namespace"], tokens, header["ttl"], expiry, path.stat().st_size)
        if path.parent.name != namespace_dir(entry.namespace) or path.stem != prefix_key(entry.namespace, tokens):
            log.warning("dropping cache file %s: it is not where its entry belongs", path)
            self._unlink(path)
            return None
        with self._lock:
            self._files[path.stem] = _File(path, entry.nbytes, expiry - entry.ttl)
            self.used_bytes += entry.nbytes
        return entry

    def entry_bytes(self, num_blocks: int) -> int:
        """About what a prefix of ``num_blocks`` blocks takes on disk (its KV)."""
        return self.num_layers * 2 * num_blocks * int(np.prod(self.block_shape))

    def write(self, namespace: str, tokens: tuple[int, ...], ttl: float, expiry: float,
              gather: Callable[[], np.ndarray]) -> str:
        """Queue a write of a prefix; ``gather`` (called on the writer thread) returns its KV
        bytes, ``[layers, 2, blocks, *block_shape]``. Returns the entry's key."""
        key = prefix_key(namespace, tokens)
        self._writes.put((self._write, (key, namespace, tokens, ttl, expiry, gather)))
        return key

    def refresh(self, key: str, expiry: float) -> None:
        """Queue a new expiry (wall clock) for a stored entry."""
        self._writes.put((self._refresh, (key, expiry)))

    def delete(self, key: str) -> None:
        self._writes.put((self._remove, (key,)))

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

    def _path(self, key: str, namespace: str) -> Path:
        return self.root / namespace_dir(namespace) / f"{key}{_SUFFIX}"

    def _write(self, key: str, namespace: str, tokens: tuple[int, ...], ttl: float, expiry: float,
               gather: Callable[[], np.ndarray]) -> None:
        kv = np.ascontiguousarray(gather())
        header = {"version": FORMAT_VERSION, "fingerprint": self.fingerprint, "namespace": namespace,
                  "ttl": ttl, "expiry": expiry, "num_tokens": len(tokens), "kv_shape": list(kv.shape)}
        head = json.dumps(header).encode()
        ids = np.asarray(tokens, dtype="<i4").tobytes()
        size = len(MAGIC) + 4 + len(head) + len(ids) + kv.nbytes + 4
        path = self._path(key, namespace)
        if not self._make_room(key, path, size):
            self._post(WriteFailed(key, f"{size} bytes is more than the disk quota of {self.quota_bytes}"))
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                crc = 0
                for part in (MAGIC, struct.pack("<I", len(head)), head, ids, memoryview(kv).cast("B")):
                    f.write(part)
                    crc = zlib.crc32(part, crc)
                f.write(struct.pack("<I", crc))
            os.replace(tmp, path)
            path.with_suffix(".exp").unlink(missing_ok=True)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            self._forget(key)
            self._post(WriteFailed(key, str(err)))
            return
        with self._lock:
            if key in self._files:
                self._files[key].complete = True
        self._post(Written(key))

    def _make_room(self, key: str, path: Path, size: int) -> bool:
        """Account ``size`` bytes to ``key``, deleting least recently used entries first."""
        if size > self.quota_bytes:
            return False
        self._forget(key)  # a rewrite replaces the old file's bytes
        while True:
            with self._lock:
                if self.used_bytes + size <= self.quota_bytes or not self._files:
                    self._files[key] = _File(path, size, self.wall_clock(), complete=False)
                    self.used_bytes += size
                    return True
                victim = min(self._files, key=lambda k: self._files[k].last_used)
            self._remove(victim)
            self._post(Evicted(victim))

    def _refresh(self, key: str, expiry: float) -> None:
        with self._lock:
            file = self._files.get(key)
            if file is None:
                return
            file.last_used = self.wall_clock()
        payload = struct.pack("<d", expiry)
        exp = file.path.with_suffix(".exp")
        tmp = exp.with_name(f".{exp.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(_EXPIRY.pack(expiry, zlib.crc32(payload)))
            os.replace(tmp, exp)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            log.warning("could not record a cache entry's new expiry: %s", err)

    def _remove(self, key: str) -> None:
        with self._lock:
            file = self._files.get(key)
        if file is not None:
            self._unlink(file.path)
            self._forget(key)

    def _forget(self, key: str) -> None:
        with self._lock:
            file = self._files.pop(key, None)
            if file is not None:
                self.used_bytes -= file.nbytes

    def _unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        path.with_suffix(".exp").unlink(missing_ok=True)

    def _load(self, key: str) -> None:
        with self._lock:
            file = self._files.get(key)
        if file is None:
            self._post(LoadFailed(key, "no longer on disk"))
            return
        try:
            kv = self._read_verified(file.path)
        except (OSError, CorruptEntry, KeyError, TypeError, ValueError) as err:
            log.warning("dropping cache file %s: %s", file.path, err)
            self._remove(key)
            self._post(LoadFailed(key, str(err)))
            return
        self._post(Loaded(key, kv))

    def _read_verified(self, path: Path) -> np.ndarray:
        data = np.fromfile(path, dtype=np.uint8)
        if data.size < len(MAGIC) + 8:
            raise CorruptEntry("truncated")
        body, (crc,) = data[:-4], struct.unpack("<I", data[-4:].tobytes())
        if zlib.crc32(memoryview(body)) != crc:
            raise CorruptEntry("checksum mismatch")
        header, tokens, at = _parse_head(memoryview(body))
        self._check_header(header, path)
        if prefix_key(header["namespace"], tokens) != path.stem:
            raise CorruptEntry("it is not the entry its name says")
        shape = tuple(header["kv_shape"])
        kv = body[at:]
        if kv.size != int(np.prod(shape)):
            raise CorruptEntry("KV size does not match its header")
        return kv.reshape(shape)

    def _check_header(self, header: dict, path: Path) -> None:
        if header.get("version") != FORMAT_VERSION or header.get("fingerprint") != self.fingerprint:
            raise CorruptEntry("written by another model, format or cache configuration")
        shape = tuple(header["kv_shape"])
        if len(shape) != 6 or shape[0] != self.num_layers or shape[1] != 2 or shape[3:] != self.block_shape:
            raise CorruptEntry("KV shape does not match this cache")


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


def _parse_head(data: memoryview) -> tuple[dict, tuple[int, ...], int]:
    """(header, tokens, offset of the KV bytes) from the start of a file."""
    if bytes(data[: len(MAGIC)]) != MAGIC:
        raise CorruptEntry("not a preheat KV file")
    at = len(MAGIC)
    (head_len,) = struct.unpack("<I", data[at: at + 4])
    at += 4
    header = json.loads(bytes(data[at: at + head_len]))
    at += head_len
    n = int(header["num_tokens"])
    if len(data) < at + 4 * n:
        raise CorruptEntry("truncated")
    tokens = tuple(np.frombuffer(data[at: at + 4 * n], dtype="<i4").tolist())
    return header, tokens, at + 4 * n


def _read_head(path: Path) -> tuple[dict, tuple[int, ...]]:
    """Header and tokens of a file, checking its size against the header (not its crc)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = f.read(len(MAGIC) + 4)
        if len(start) < len(MAGIC) + 4:
            raise CorruptEntry("truncated")
        (head_len,) = struct.unpack("<I", start[len(MAGIC):])
        head = f.read(head_len)
        header = json.loads(head)
        ids = f.read(4 * int(header["num_tokens"]))
    header, tokens, at = _parse_head(memoryview(start + head + ids))
    if size != at + int(np.prod(header["kv_shape"])) + 4:
        raise CorruptEntry("truncated or padded")
    return header, tokens


def _read_expiry(path: Path) -> float:
    """A refreshed expiry, or 0 when there is none (or it is damaged)."""
    try:
        expiry, crc = _EXPIRY.unpack(path.read_bytes())
    except (OSError, struct.error):
        return 0.0
    return expiry if zlib.crc32(struct.pack("<d", expiry)) == crc else 0.0


def cache_fingerprint(**parts: object) -> str:
    """Names one cache configuration (model content, weight format, KV dtype, block size...):
    files written under another fingerprint are never read."""
    text = json.dumps({"format": FORMAT_VERSION, **{k: str(v) for k, v in parts.items()}}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
