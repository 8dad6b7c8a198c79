"""The TTL pin table: prompt caching's promises, and the tree nodes each one protects.

Pins implement prompt caching: a pin protects the blocks of a prefix until its expiry; a
hit (``lookup_pin``) refreshes the expiry; an expired pin protects nothing from that moment
and is retired at the next ``RadixCache.tick`` (or sooner, by ``retire``). A pin may end
mid-block: the tree protects its full blocks and the few tokens past the last boundary are
recomputed. Entries are per namespace, like the tree's prefixes.

A pin entry may live in RAM (its blocks protected in the tree), on disk (a copy in the disk
tier, see ``kv_offload.py``) or both; a ``PinListener`` hears of pins placed, hit and
dropped so it can keep the disk copy current.

The table records the tree nodes each entry in RAM covers (and, per node, the entries that
cover it), so unpinning, retiring and counting pinned blocks touch those nodes alone, never
the whole tree. The tree keeps that record right through its two changes of shape: a node
split in two (``split``) and a node evicted (``evicted``).

Threads: this table is the only part of the KV cache other threads touch. They may call
``lookup_pin``, ``lookup_pin_entry``, ``can_pin`` and ``entries`` and read
``pinned_blocks``; every other method, and the record of nodes, is the engine thread's.
The lock guards the entries by prefix, the lengths index and the entries' expiries.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

Tokens = tuple[int, ...]


@dataclass(eq=False)
class PinEntry:
    namespace: str
    tokens: Tokens  # the pinned prefix, any length
    ttl: float
    expiry: float
    in_ram: bool = True  # its full blocks are protected in the tree
    on_disk: bool = False  # the disk tier holds a complete copy
    writing: bool = False  # a copy is being written

    def alive(self, now: float) -> bool:
        return self.expiry > now

    def aligned(self, block_size: int) -> int:
        """Its tokens in whole blocks: what the tree can hold of it."""
        return len(self.tokens) - len(self.tokens) % block_size

    @property
    def last_used(self) -> float:
        return self.expiry - self.ttl


class PinListener(Protocol):
    def pinned(self, entry: PinEntry, blocks: list[int]) -> None:
        """``entry`` was placed or refreshed in RAM; ``blocks`` hold its full blocks."""

    def hit(self, entry: PinEntry) -> None:
        """A lookup refreshed ``entry``'s expiry (any thread)."""

    def dropped(self, entries: list[PinEntry]) -> None:
        """These entries expired or were ended: they must not be served again."""


class Node(Protocol):
    """What the table needs of a tree node: the blocks it holds (and its identity)."""

    blocks: list[int]


class PinTable:
    """The pinned prefixes by (namespace, tokens), and the tree nodes each one covers."""

    def __init__(self, clock: Callable[[], float], max_pinned_blocks: int):
        self.clock = clock
        self.max_pinned_blocks = max_pinned_blocks
        self.listener: PinListener | None = None  # the disk tier's offload, when there is one
        self.pinned_blocks = 0  # blocks under a live pin, as of the last count
        self.next_expiry = float("inf")  # the earliest expiry of an entry, as of the last count
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, Tokens], PinEntry] = {}
        self._lengths: dict[str, set[int]] = {}  # namespace -> lengths of its entries
        # engine thread only: the nodes each entry protects, and the entries on each node
        self._nodes_of: dict[PinEntry, set[Node]] = {}
        self._entries_on: dict[Node, set[PinEntry]] = {}

    # ---- any thread ---------------------------------------------------------

    def can_pin(self, new_blocks: int) -> bool:
        """Whether ``new_blocks`` more pinned blocks stay within ``max_pinned_blocks``.

        Checked when a request is admitted, so its usage never reports a write
        that is then refused. Reads the engine thread's count.
        """
        return self.pinned_blocks + new_blocks <= self.max_pinned_blocks

    def lookup_pin(self, ns: str, tokens: list[int], max_len: int) -> int:
        """Length of the longest live pinned prefix of ``tokens`` no longer than ``max_len``.

        A hit refreshes that entry's expiry.
        """
        return self.lookup_pin_entry(ns, tokens, max_len)[0]

    def lookup_pin_entry(self, ns: str, tokens: list[int], max_len: int) -> tuple[int, PinEntry | None]:
        """``lookup_pin``, with the entry hit (None on a miss)."""
        now = self.clock()
        with self._lock:
            for length in sorted(self._lengths.get(ns, ()), reverse=True):
                if length > max_len or length > len(tokens):
                    continue
                entry = self._entries.get((ns, tuple(tokens[:length])))
                if entry is not None and entry.alive(now):
                    entry.expiry = now + entry.ttl
                    break
            else:
                return 0, None
        if self.listener is not None:
            self.listener.hit(entry)
        return length, entry

    def entries(self) -> list[PinEntry]:
        """Every entry not yet retired (some may have expired since)."""
        with self._lock:
            return list(self._entries.values())

    # ---- placing and ending pins (engine thread) ----------------------------

    def renew(self, ns: str, tokens: Tokens, ttl: float) -> PinEntry:
        """The entry a pin of ``tokens`` for ``ttl`` s places: the live one, made to last that
        long at least, or a new one (in the table once ``place`` puts it there)."""
        now = self.clock()
        with self._lock:
            entry = self._entries.get((ns, tokens))
            if entry is not None and entry.alive(now):
                entry.expiry = max(entry.expiry, now + ttl)
                entry.ttl = max(entry.ttl, ttl)
                return entry
        return PinEntry(ns, tokens, ttl, now + ttl)

    def place(self, entry: PinEntry, nodes: list[Node]) -> None:
        """Put a ``renew``ed entry in the table, protecting ``nodes`` (those of its full
        blocks, in order), and tell the listener."""
        self._cover(entry, nodes)
        with self._lock:
            self._entries[(entry.namespace, entry.tokens)] = entry
            self._lengths.setdefault(entry.namespace, set()).add(len(entry.tokens))
        self._recount(self.clock())
        if self.listener is not None:
            self.listener.pinned(entry, [b for node in nodes for b in node.blocks])

    def cover(self, entry: PinEntry, nodes: list[Node]) -> None:
        """Protect a disk-only entry's blocks in RAM again: they are back in the tree, in ``nodes``."""
        self._cover(entry, nodes)
        self._recount(self.clock())

    def unpin_ram(self, entry: PinEntry) -> None:
        """Stop protecting ``entry``'s blocks (its disk copy serves it from now on)."""
        self._uncover(entry)
        entry.in_ram = False
        self._recount(self.clock())

    def restore(self, entry: PinEntry) -> None:
        """Register an entry that only the disk tier holds (found there at start)."""
        entry.in_ram = False
        with self._lock:
            self._entries[(entry.namespace, entry.tokens)] = entry
            self._lengths.setdefault(entry.namespace, set()).add(len(entry.tokens))
            self.next_expiry = min(self.next_expiry, entry.expiry)

    def forget(self, entry: PinEntry) -> None:
        """Drop ``entry`` now (its disk copy is gone and RAM does not hold it)."""
        self.end(entry, self.clock())
        self.retire(self.clock())

    def releasable(self, now: float, keep_undisked: bool) -> list[PinEntry]:
        """Live entries in RAM in the order ``RadixCache.release_pins`` takes them out of it:
        those with a disk copy, then those being written, then (unless ``keep_undisked``) the
        others; least recently used first within each."""
        with self._lock:
            return sorted((e for e in self._entries.values() if e.alive(now) and e.in_ram
                           and (e.on_disk or e.writing or not keep_undisked)),
                          key=lambda e: (not e.on_disk, not e.writing, e.last_used))

    def end(self, entry: PinEntry, now: float) -> None:
        """Make ``entry`` expire at ``now``: from then on it protects nothing and no lookup
        finds it; ``retire`` drops it."""
        with self._lock:
            entry.expiry = min(entry.expiry, now)

    def retire(self, now: float) -> None:
        """Drop the entries that are no longer alive, tell the listener, recount."""
        with self._lock:
            dropped = [self._entries.pop(key) for key, e in list(self._entries.items()) if not e.alive(now)]
            if dropped:
                self._lengths = {}
                for ns, tokens in self._entries:
                    self._lengths.setdefault(ns, set()).add(len(tokens))
        # an entry replaced by a newer pin of its prefix is out of the table but may still be recorded
        for entry in [e for e in self._nodes_of if not e.alive(now)]:
            self._uncover(entry)
        self._recount(now)
        if dropped and self.listener is not None:
            self.listener.dropped(dropped)

    # ---- the tree's nodes (engine thread) -----------------------------------

    def protects(self, node: Node, now: float) -> bool:
        """Whether a live entry covers ``node`` (an expired one protects nothing, retired or not)."""
        return any(e.alive(now) for e in self._entries_on.get(node, ()))

    def split(self, node: Node, upper: Node) -> None:
        """``node`` was cut in two, ``upper`` taking its first blocks: both halves stay covered."""
        entries = self._entries_on.get(node)
        if not entries:
            return
        self._entries_on[upper] = set(entries)
        for entry in entries:
            self._nodes_of[entry].add(upper)

    def evicted(self, node: Node) -> None:
        """``node`` left the tree (only a node no live entry covers may)."""
        for entry in self._entries_on.pop(node, ()):
            nodes = self._nodes_of[entry]
            nodes.discard(node)
            if not nodes:
                del self._nodes_of[entry]

    def _cover(self, entry: PinEntry, nodes: list[Node]) -> None:
        for node in nodes:
            self._nodes_of.setdefault(entry, set()).add(node)
            self._entries_on.setdefault(node, set()).add(entry)
        entry.in_ram = True

    def _uncover(self, entry: PinEntry) -> None:
        for node in self._nodes_of.pop(entry, ()):
            entries = self._entries_on[node]
            entries.discard(entry)
            if not entries:
                del self._entries_on[node]

    def _recount(self, now: float) -> None:
        self.pinned_blocks = sum(len(node.blocks) for node, entries in self._entries_on.items()
                                 if any(e.alive(now) for e in entries))
        with self._lock:
            self.next_expiry = min((e.expiry for e in self._entries.values()), default=float("inf"))
