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

Threads: the tree belongs to the engine thread. Other threads may call only
``lookup_pin`` and ``can_pin`` and read the ``cached_blocks`` / ``pinned_blocks``
counters, which the engine thread keeps current.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from preheat.engine.block_pool import BlockPool

Tokens = tuple[int, ...]


@dataclass(eq=False)
class PinEntry:
    namespace: str
    tokens: Tokens  # the pinned prefix, any length
    ttl: float
    expiry: float

    def alive(self, now: float) -> bool:
        return self.expiry > now


@dataclass(eq=False)
class _Node:
    tokens: Tokens
    blocks: list[int]
    parent: _Node | None
    children: dict[Tokens, _Node] = field(default_factory=dict)
    pins: set[PinEntry] = field(default_factory=set)
    last_access: float = 0.0

    def pinned(self, now: float) -> bool:
        return any(p.alive(now) for p in self.pins)


class RadixCache:
    def __init__(self, pool: BlockPool, *, clock: Callable[[], float] = time.monotonic,
                 max_pinned_blocks: int | None = None):
        self.pool = pool
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
        """Free at least ``num_blocks`` blocks if possible, oldest leaves first."""
        # Expired pins no longer protect (``pinned`` checks expiry); ``tick`` retires them.
        now = self.clock()
        tie = itertools.count()
        heap = [(n.last_access, next(tie), n) for n in self._nodes() if self._evictable(n, now)]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < num_blocks:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            del parent.children[self._key(node.tokens, 0)]
            self.pool.decref(node.blocks)
            self.cached_blocks -= len(node.blocks)
            freed += len(node.blocks)
            if parent.parent is not None and self._evictable(parent, now):
                heapq.heappush(heap, (parent.last_access, next(tie), parent))
        return freed

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
        aligned = len(tokens) - len(tokens) % self.bs
        path, matched = self._walk(ns, key[1][:aligned], split=True)
        if matched < aligned:
            return False
        with self._pin_lock:
            entry = self._pins.get(key)
            if entry is not None and entry.alive(now):
                entry.expiry = max(entry.expiry, now + ttl)
                entry.ttl = max(entry.ttl, ttl)
                return True
            entry = PinEntry(ns, key[1], ttl, now + ttl)
            self._pins[key] = entry
            self._pin_lengths.setdefault(ns, set()).add(len(tokens))
        for node in path:
            node.pins.add(entry)
        self._recount(now)
        return True

    def lookup_pin(self, ns: str, tokens: list[int], max_len: int) -> int:
        """Length of the longest live pinned prefix of ``tokens`` no longer than ``max_len``.

        A hit refreshes that entry's expiry. Thread-safe.
        """
        now = self.clock()
        with self._pin_lock:
            for length in sorted(self._pin_lengths.get(ns, ()), reverse=True):
                if length > max_len or length > len(tokens):
                    continue
                entry = self._pins.get((ns, tuple(tokens[:length])))
                if entry is not None and entry.alive(now):
                    entry.expiry = now + entry.ttl
                    return length
        return 0

    def release_pins(self, num_blocks: int) -> int:
        """End live pins, least recently refreshed first, until evicting has freed
        ``num_blocks`` blocks or no pin is left; returns the blocks freed.

        For a request that fits the pool but finds it held by pins: it must not wait
        for them to expire (minutes, or an hour). The entries it ends are dropped.
        """
        now = self.clock()
        with self._pin_lock:
            order = sorted((e for e in self._pins.values() if e.alive(now)),
                           key=lambda e: e.expiry - e.ttl)
        freed = 0
        for entry in order:
            if freed >= num_blocks:
                break
            with self._pin_lock:
                entry.expiry = now  # no longer alive: ``pinned`` and ``lookup_pin`` skip it
            freed += self.evict(num_blocks - freed)
        if order:
            self._drop_expired_pins(now)
        return freed

    def _drop_expired_pins(self, now: float) -> None:
        with self._pin_lock:
            dead = [k for k, e in self._pins.items() if not e.alive(now)]
            for key in dead:
                del self._pins[key]
            self._pin_lengths = {}
            for ns, toks in self._pins:
                self._pin_lengths.setdefault(ns, set()).add(len(toks))
        for node in self._nodes():
            node.pins = {p for p in node.pins if p.alive(now)}
        self._recount(now)

    def _recount(self, now: float) -> None:
        self.pinned_blocks = sum(len(n.blocks) for n in self._nodes() if n.pinned(now))
        with self._pin_lock:
            self._next_expiry = min((e.expiry for e in self._pins.values()), default=float("inf"))
