"""Radix tree of cached KV blocks, keyed by token ids, with TTL pins.

Edges hold whole blocks (a multiple of ``block_size`` tokens), so a lookup
returns the longest cached prefix rounded down to a block boundary. Blocks are
shared copy-free: the tree holds one reference on each block it stores, and
every sequence using them holds its own. Leaves whose blocks nobody else holds
are evicted least-recently-used when the pool needs room.

Pins implement prompt caching: ``pin`` protects the blocks of a prefix until
its expiry; a hit (``lookup_pin``) refreshes the expiry; an expired pin leaves
an ordinary evictable entry behind. A pin may end mid-block: the tree protects
its full blocks and the few tokens past the last boundary are recomputed.
Everything is per namespace: prefixes are never shared across namespaces.

A held prefix (``hold``, for message threads) may keep its last, partial block too:
that block goes to the one request that continues the prefix exactly (``take_tail``),
so a thread's next turn recomputes no token of its history.

A pin entry may live in RAM (its blocks protected in the tree), on disk (a copy
in the disk tier, see ``kv_offload.py``) or both; a ``PinListener`` hears of pins
placed, hit and dropped so it can keep the disk copy current.

Threads: the tree belongs to the engine thread. Other threads may call only
``lookup_pin``, ``lookup_pin_entry``, ``can_pin`` and ``pins`` and read the
``cached_blocks`` / ``pinned_blocks`` counters, which the engine thread keeps current.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from preheat.engine.block_pool import BlockPool

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


@dataclass(eq=False)
class _Node:
    tokens: Tokens
    blocks: list[int]
    parent: _Node | None
    children: dict[Tokens, _Node] = field(default_factory=dict)
    pins: set[PinEntry] = field(default_factory=set)
    last_access: float = 0.0
    held_until: float = 0.0  # see RadixCache.hold

    def pinned(self, now: float) -> bool:
        return any(p.alive(now) for p in self.pins)


@dataclass(eq=False)
class _Tail:
    """The partial block after a held prefix's full blocks: its tokens and the block."""

    tokens: Tokens
    block: int
    held_until: float


class RadixCache:
    def __init__(self, pool: BlockPool, *, clock: Callable[[], float] = time.monotonic,
                 max_pinned_blocks: int | None = None, listener: PinListener | None = None):
        self.pool = pool
        self.listener = listener
        self.bs = pool.block_size
        self.clock = clock
        self.max_pinned_blocks = pool.num_blocks if max_pinned_blocks is None else max_pinned_blocks
        self.cached_blocks = 0  # blocks held by the tree
        self.pinned_blocks = 0  # blocks under a live pin, as of the last recount
        self._next_expiry = float("inf")
        self._roots: dict[str, _Node] = {}
        # Pin lookups come from the API's thread while the engine thread pins; only this
        # table is shared, tree nodes are touched by the engine thread alone.
        self._pin_lock = threading.Lock()
        self._pins: dict[tuple[str, Tokens], PinEntry] = {}
        self._pin_lengths: dict[str, set[int]] = {}
        self._tails: dict[tuple[str, Tokens], _Tail] = {}  # (ns, block-aligned prefix) -> tail

    # ---- tree -------------------------------------------------------------

    def _root(self, ns: str) -> _Node:
        if ns not in self._roots:
            self._roots[ns] = _Node((), [], None)
        return self._roots[ns]

    def _key(self, tokens: Tokens | list[int], at: int) -> Tokens:
        return tuple(tokens[at: at + self.bs])

    def _common_blocks(self, node: _Node, tokens: list[int] | Tokens, at: int) -> int:
        """How many of ``node``'s blocks match ``tokens[at:]`` exactly."""
        n = 0
        for i in range(len(node.blocks)):
            lo = i * self.bs
            if tuple(tokens[at + lo: at + lo + self.bs]) != node.tokens[lo: lo + self.bs]:
                break
            n += 1
        return n

    def _split(self, node: _Node, nblocks: int) -> _Node:
        """Cut ``node`` after ``nblocks`` blocks; returns the new upper part."""
        cut = nblocks * self.bs
        upper = _Node(node.tokens[:cut], node.blocks[:nblocks], node.parent,
                      pins=set(node.pins), last_access=node.last_access)
        node.parent.children[self._key(upper.tokens, 0)] = upper
        node.tokens, node.blocks, node.parent = node.tokens[cut:], node.blocks[nblocks:], upper
        upper.children[self._key(node.tokens, 0)] = node
        return upper

    def _walk(self, ns: str, tokens: list[int] | Tokens, split: bool) -> tuple[list[_Node], int]:
        """Follow ``tokens`` down the tree; returns the nodes passed and the tokens matched.

        With ``split`` a partially matched edge is split so the path ends on a node boundary.
        """
        node, at, path = self._root(ns), 0, []
        usable = len(tokens) - len(tokens) % self.bs
        while at < usable:
            child = node.children.get(self._key(tokens, at))
            if child is None:
                break
            n = self._common_blocks(child, tokens, at)
            if n < len(child.blocks):
                if not split:
                    path.append(child)
                    at += n * self.bs
                    break
                child = self._split(child, n)
            path.append(child)
            at += len(child.tokens)
            node = child
        return path, at

    def match(self, ns: str, tokens: list[int]) -> list[int]:
        """Blocks holding the longest cached block-aligned prefix of ``tokens``."""
        path, matched = self._walk(ns, tokens, split=False)
        now = self.clock()
        blocks: list[int] = []
        for node in path:
            node.last_access = now
            blocks.extend(node.blocks)
        return blocks[: matched // self.bs]

    def cached_len(self, ns: str, tokens: list[int] | Tokens) -> int:
        """Tokens of ``tokens`` the tree holds (block-aligned), without touching LRU order."""
        return self._walk(ns, tokens, split=False)[1]

    def insert(self, ns: str, tokens: list[int], blocks: list[int]) -> None:
        """Add the full blocks of ``tokens`` (len == len(blocks) * block_size).

        Parts already in the tree keep the tree's blocks; the caller's copies
        stay the caller's and go back to the pool when it releases them.
        """
        assert len(tokens) == len(blocks) * self.bs, "insert takes whole blocks"
        path, at = self._walk(ns, tokens, split=True)
        now = self.clock()
        for node in path:
            node.last_access = now
        if at == len(tokens):
            return
        parent = path[-1] if path else self._root(ns)
        first = at // self.bs
        leaf = _Node(tuple(tokens[at:]), list(blocks[first:]), parent, last_access=now)
        self.pool.incref(leaf.blocks)
        self.cached_blocks += len(leaf.blocks)
        parent.children[self._key(leaf.tokens, 0)] = leaf

    def _nodes(self):
        stack = list(self._roots.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if node.parent is not None:
                yield node

    def tick(self) -> None:
        """Once per engine step: retire pins whose time has come and recount."""
        now = self.clock()
        if now >= self._next_expiry:
            self._drop_expired_pins(now)

    def _evictable(self, node: _Node, now: float) -> bool:
        return (not node.children and not node.pinned(now)
                and all(self.pool.refcount(b) == 1 for b in node.blocks))

    def evict(self, num_blocks: int) -> int:
        """Free at least ``num_blocks`` blocks if possible, oldest leaves first; held ones
        (and held tails, newest last) only once no other is left."""
        # Expired pins no longer protect (``pinned`` checks expiry); ``tick`` retires them.
        now = self.clock()
        freed = self._drop_tails(lambda t: t.held_until <= now, num_blocks)
        tie = itertools.count()

        def order(n: _Node) -> tuple:
            return n.held_until > now, n.last_access, next(tie)

        heap = [(*order(n), n) for n in self._nodes() if self._evictable(n, now)]
        heapq.heapify(heap)
        while heap and freed < num_blocks and heap[0][0] is False:
            freed += self._evict_node(heapq.heappop(heap)[-1], heap, order, now)
        freed += self._drop_tails(lambda t: True, num_blocks - freed)
        while heap and freed < num_blocks:
            freed += self._evict_node(heapq.heappop(heap)[-1], heap, order, now)
        return freed

    def _evict_node(self, node: _Node, heap: list, order: Callable[[_Node], tuple], now: float) -> int:
        """Remove a leaf; its parent joins ``heap`` if that makes it a leaf nobody uses."""
        parent = node.parent
        del parent.children[self._key(node.tokens, 0)]
        self.pool.decref(node.blocks)
        self.cached_blocks -= len(node.blocks)
        if parent.parent is not None and self._evictable(parent, now):
            heapq.heappush(heap, (*order(parent), parent))
        return len(node.blocks)

    def hold(self, ns: str, tokens: list[int], ttl: float, tail_block: int | None = None) -> None:
        """Keep the cached part of ``tokens`` ahead of other unpinned entries for ``ttl`` s.

        Not a pin: nothing is promised or reported, and when memory runs short it goes
        (after every entry not held) before any running request is preempted. A message
        thread holds its history this way, so its next turn finds it. ``tail_block`` holds
        the tokens past the last full block, for ``take_tail``; the caller keeps its own
        reference to it.
        """
        until = self.clock() + ttl
        for node in self._walk(ns, tokens, split=False)[0]:
            node.held_until = max(node.held_until, until)
        aligned = len(tokens) - len(tokens) % self.bs
        if tail_block is None or aligned == len(tokens):
            return
        self.pool.incref([tail_block])
        self.cached_blocks += 1
        key = (ns, tuple(tokens[:aligned]))
        self._drop_tail(key)
        self._tails[key] = _Tail(tuple(tokens[aligned:]), tail_block, until)

    def take_tail(self, ns: str, tokens: list[int], matched: int) -> tuple[int, int] | None:
        """The held tail that continues ``tokens[:matched]`` (block-aligned) with the next
        tokens of ``tokens``: (block, tokens it holds), handed over with its reference, or None.

        A tail goes to one taker: its block is written past its tokens from then on.
        """
        if not self._tails:
            return None
        key = (ns, tuple(tokens[:matched]))
        tail = self._tails.get(key)
        if tail is None or tuple(tokens[matched: matched + len(tail.tokens)]) != tail.tokens:
            return None
        del self._tails[key]
        self.cached_blocks -= 1
        return tail.block, len(tail.tokens)

    def _drop_tail(self, key: tuple[str, Tokens]) -> int:
        tail = self._tails.pop(key, None)
        if tail is None:
            return 0
        self.pool.decref([tail.block])
        self.cached_blocks -= 1
        return 1

    def _drop_tails(self, which: Callable[[_Tail], bool], num_blocks: int) -> int:
        """Free up to ``num_blocks`` tails that ``which`` picks, those held longest ago first."""
        keys = sorted((k for k, t in self._tails.items() if which(t)),
                      key=lambda k: self._tails[k].held_until)
        return sum(self._drop_tail(k) for k in keys[:max(num_blocks, 0)])

    # ---- pins -------------------------------------------------------------

    def can_pin(self, new_blocks: int) -> bool:
        """Whether ``new_blocks`` more pinned blocks stay within ``max_pinned_blocks``.

        Checked when a request is admitted, so its usage never reports a write
        that is then refused. Thread-safe (reads the engine thread's counter).
        """
        return self.pinned_blocks + new_blocks <= self.max_pinned_blocks

    def pin(self, ns: str, tokens: list[int], ttl: float) -> bool:
        """Protect ``tokens`` (already inserted up to its last full block) for ``ttl`` s.

        Returns False when the prefix is not in the tree.
        """
        now = self.clock()
        key = (ns, tuple(tokens))
        with self._pin_lock:
            entry = self._pins.get(key)
            if entry is not None and entry.alive(now):
                entry.expiry = max(entry.expiry, now + ttl)
                entry.ttl = max(entry.ttl, ttl)
            else:
                entry = PinEntry(ns, key[1], ttl, now + ttl)
        blocks = self._protect(entry)
        if blocks is None:
            return False
        with self._pin_lock:
            self._pins[key] = entry
            self._pin_lengths.setdefault(ns, set()).add(len(tokens))
        self._recount(now)
        if self.listener is not None:
            self.listener.pinned(entry, blocks)
        return True

    def repin(self, entry: PinEntry) -> bool:
        """Protect a disk-only entry's blocks in RAM again (they are back in the tree)."""
        if self._protect(entry) is None:
            return False
        self._recount(self.clock())
        return True

    def _protect(self, entry: PinEntry) -> list[int] | None:
        """Mark the nodes of ``entry``'s full blocks; their blocks, or None if not all cached."""
        aligned = len(entry.tokens) - len(entry.tokens) % self.bs
        path, matched = self._walk(entry.namespace, entry.tokens[:aligned], split=True)
        if matched < aligned:
            return None
        for node in path:
            node.pins.add(entry)
        entry.in_ram = True
        return [b for node in path for b in node.blocks]

    def unpin_ram(self, entry: PinEntry) -> None:
        """Stop protecting ``entry``'s blocks (its disk copy serves it from now on)."""
        for node in self._nodes():
            node.pins.discard(entry)
        entry.in_ram = False
        self._recount(self.clock())

    def restore(self, entry: PinEntry) -> None:
        """Register an entry that only the disk tier holds (found there at start)."""
        entry.in_ram = False
        with self._pin_lock:
            self._pins[(entry.namespace, entry.tokens)] = entry
            self._pin_lengths.setdefault(entry.namespace, set()).add(len(entry.tokens))
            self._next_expiry = min(self._next_expiry, entry.expiry)

    def forget(self, entry: PinEntry) -> None:
        """Drop ``entry`` now (its disk copy is gone and RAM does not hold it)."""
        with self._pin_lock:
            entry.expiry = min(entry.expiry, self.clock())
        self._drop_expired_pins(self.clock())

    def pins(self) -> list[PinEntry]:
        with self._pin_lock:
            return list(self._pins.values())

    def lookup_pin(self, ns: str, tokens: list[int], max_len: int) -> int:
        """Length of the longest live pinned prefix of ``tokens`` no longer than ``max_len``.

        A hit refreshes that entry's expiry. Thread-safe.
        """
        return self.lookup_pin_entry(ns, tokens, max_len)[0]

    def lookup_pin_entry(self, ns: str, tokens: list[int], max_len: int) -> tuple[int, PinEntry | None]:
        """``lookup_pin``, with the entry hit (None on a miss)."""
        now = self.clock()
        with self._pin_lock:
            for length in sorted(self._pin_lengths.get(ns, ()), reverse=True):
                if length > max_len or length > len(tokens):
                    continue
                entry = self._pins.get((ns, tuple(tokens[:length])))
                if entry is not None and entry.alive(now):
                    entry.expiry = now + entry.ttl
                    break
            else:
                return 0, None
        if self.listener is not None:
            self.listener.hit(entry)
        return length, entry

    def release_pins(self, num_blocks: int, keep_undisked: bool = False) -> int:
        """Take pinned prefixes out of RAM until evicting has freed ``num_blocks`` blocks or
        none is left in RAM; returns the blocks freed.

        For a request that fits the pool but finds it held by pins: it must not wait
        for them to expire (minutes, or an hour). Entries with a disk copy go first and
        live on there; then those being written, which live on too (their blocks free up
        once written); the others, least recently used first, are dropped, unless
        ``keep_undisked``.
        """
        now = self.clock()
        with self._pin_lock:
            order = sorted((e for e in self._pins.values() if e.alive(now) and e.in_ram
                            and (e.on_disk or e.writing or not keep_undisked)),
                           key=lambda e: (not e.on_disk, not e.writing, e.last_used))
        freed = 0
        for entry in order:
            if freed >= num_blocks:
                break
            if entry.on_disk or entry.writing:
                self.unpin_ram(entry)
            else:
                with self._pin_lock:
                    entry.expiry = now  # no longer alive: ``pinned`` and ``lookup_pin`` skip it
            freed += self.evict(num_blocks - freed)
        if order:
            self._drop_expired_pins(now)
        return freed

    def _drop_expired_pins(self, now: float) -> None:
        with self._pin_lock:
            dead = [k for k, e in self._pins.items() if not e.alive(now)]
            dropped = [self._pins.pop(key) for key in dead]
            self._pin_lengths = {}
            for ns, toks in self._pins:
                self._pin_lengths.setdefault(ns, set()).add(len(toks))
        for node in self._nodes():
            node.pins = {p for p in node.pins if p.alive(now)}
        self._recount(now)
        if dropped and self.listener is not None:
            self.listener.dropped(dropped)

    def _recount(self, now: float) -> None:
        self.pinned_blocks = sum(len(n.blocks) for n in self._nodes() if n.pinned(now))
        with self._pin_lock:
            self._next_expiry = min((e.expiry for e in self._pins.values()), default=float("inf"))
