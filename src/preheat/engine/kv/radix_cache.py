"""Radix tree of cached KV blocks, keyed by token ids, with LRU eviction and thread holds.

Edges hold whole blocks (a multiple of ``block_size`` tokens), so a lookup
returns the longest cached prefix rounded down to a block boundary. Blocks are
shared copy-free: the tree holds one reference on each block it stores, and
every sequence using them holds its own. Leaves whose blocks nobody else holds
are evicted least-recently-used when the pool needs room.
Everything is per namespace: prefixes are never shared across namespaces.

A pinned prefix (``pin``, for prompt caching) is never evicted while its pin lives;
the pins themselves, and which nodes each protects, are the ``PinTable``'s
(``pins``, see ``pin_table.py``). An expired pin leaves an ordinary evictable entry behind.

A held prefix (``hold``, for message threads) may keep its last, partial block too:
that block goes to the one request that continues the prefix exactly (``take_tail``),
so a thread's next turn recomputes no token of its history.

With sliding-window layers (``slots``, see ``window_slots.py``), a prefix is only as good as
the local KV before its end: the tree keeps a window's worth of it (a ``_Window``) at the
places later requests resume (breakpoints, prompt and sequence ends; the scheduler says
which), and ``match`` returns the longest prefix whose window is all there. A pinned
prefix's window lives as long as its pin; the others go least recently used when the slots
run short, and with the blocks they end at.

Threads: the tree belongs to the engine thread; it has no lock. Other threads reach
only ``pins`` (as ``pin_table.py`` says) and read the ``cached_blocks`` /
``pinned_blocks`` counters, which the engine thread keeps current.
"""
from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from preheat.engine.kv.block_pool import BlockPool
from preheat.engine.kv.pin_table import PinEntry, PinTable, Tokens
from preheat.engine.kv.window_slots import WindowSlots


@dataclass(eq=False)
class _Node:
    tokens: Tokens
    blocks: list[int]
    parent: _Node | None
    children: dict[Tokens, _Node] = field(default_factory=dict)
    last_access: float = 0.0
    held_until: float = 0.0  # see RadixCache.hold


@dataclass(eq=False)
class _Tail:
    """The partial block after a held prefix's full blocks: its tokens and the block."""

    tokens: Tokens
    block: int
    held_until: float
    slot: bool = False  # holds the block's window slot too


@dataclass(eq=False)
class _Window:
    """The local KV a request resuming after a cached block needs: the slots of the blocks
    its window reads, held by the tree (keyed by that last block)."""

    blocks: list[int]
    last_access: float
    pin: PinEntry | None = None  # kept while this pin lives in RAM

    def protected(self, now: float) -> bool:
        return self.pin is not None and self.pin.in_ram and self.pin.alive(now)


class RadixCache:
    def __init__(self, pool: BlockPool, *, clock: Callable[[], float] = time.monotonic,
                 max_pinned_blocks: int | None = None, slots: WindowSlots | None = None):
        self.pool = pool
        self.slots = slots
        self._windows: dict[int, _Window] = {}  # last block -> its window (with ``slots``)
        self.bs = pool.block_size
        self.clock = clock
        self.pins = PinTable(clock, pool.num_blocks if max_pinned_blocks is None else max_pinned_blocks)
        self.cached_blocks = 0  # blocks held by the tree
        self._roots: dict[str, _Node] = {}
        self._tails: dict[tuple[str, Tokens], _Tail] = {}  # (ns, block-aligned prefix) -> tail

    @property
    def pinned_blocks(self) -> int:
        """Blocks of the tree under a live pin, as of the pin table's last count."""
        return self.pins.pinned_blocks

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
        upper = _Node(node.tokens[:cut], node.blocks[:nblocks], node.parent, last_access=node.last_access)
        node.parent.children[self._key(upper.tokens, 0)] = upper
        node.tokens, node.blocks, node.parent = node.tokens[cut:], node.blocks[nblocks:], upper
        upper.children[self._key(node.tokens, 0)] = node
        self.pins.split(node, upper)
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
        blocks = self._resumable(blocks[: matched // self.bs])
        if blocks and (window := self._windows.get(blocks[-1])) is not None:
            window.last_access = now
        return blocks

    def cached_len(self, ns: str, tokens: list[int] | Tokens) -> int:
        """Tokens of ``tokens`` a request may resume after (block-aligned), without touching
        LRU order."""
        return len(self._resumable(self.cached_blocks_of(ns, tokens))) * self.bs

    def cached_blocks_of(self, ns: str, tokens: list[int] | Tokens) -> list[int]:
        """The tree's blocks for the block-aligned start of ``tokens``, resumable or not."""
        path, matched = self._walk(ns, tokens, split=False)
        return [b for node in path for b in node.blocks][: matched // self.bs]

    def _resumable(self, blocks: list[int]) -> list[int]:
        return blocks if self.slots is None else blocks[: self.slots.resumable(blocks)]

    # ---- windows (sliding-window layers) ------------------------------------

    def keep_window(self, ns: str, tokens: list[int] | Tokens, pin: PinEntry | None = None) -> bool:
        """Keep the local KV a request resuming after ``tokens`` (cached, whole blocks) needs;
        False when some of it is gone already. ``pin`` keeps it while that pin lives in RAM."""
        if self.slots is None or not tokens:
            return True
        blocks = self.cached_blocks_of(ns, tokens)
        if len(blocks) * self.bs != len(tokens):
            return False
        window = self._windows.get(blocks[-1])
        if window is None:
            held = blocks[self.slots.first_needed(len(tokens)):]
            if not self.slots.share(held):
                return False
            window = self._windows[blocks[-1]] = _Window(held, self.clock())
        window.last_access = self.clock()
        if pin is not None:
            window.pin = pin
        return True

    def evict_windows(self, num_slots: int) -> int:
        """Free at least ``num_slots`` window slots if possible, least recently used windows
        first (not those of pins in RAM); returns the slots freed."""
        if self.slots is None or num_slots <= 0:
            return 0
        now, start = self.clock(), self.slots.num_free
        order = sorted((w.last_access, key) for key, w in self._windows.items() if not w.protected(now))
        for _, key in order:
            if self.slots.num_free - start >= num_slots:
                break
            self._drop_window(key)
        return self.slots.num_free - start

    def _drop_window(self, key: int) -> None:
        window = self._windows.pop(key, None)
        if window is not None:
            self.slots.drop(window.blocks)

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
        if now >= self.pins.next_expiry:
            self.pins.retire(now)

    def _evictable(self, node: _Node, now: float) -> bool:
        return (not node.children and not self.pins.protects(node, now)
                and all(self.pool.refcount(b) == 1 for b in node.blocks))

    def evict(self, num_blocks: int) -> int:
        """Free at least ``num_blocks`` blocks if possible, oldest leaves first; held ones
        (and held tails, newest last) only once no other is left."""
        # Expired pins no longer protect (``protects`` checks expiry); ``tick`` retires them.
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
        self.pins.evicted(node)
        if self._windows:
            for b in node.blocks:
                self._drop_window(b)
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
        slot = self.slots is not None and self.slots.share([tail_block])
        self.cached_blocks += 1
        key = (ns, tuple(tokens[:aligned]))
        self._drop_tail(key)
        self._tails[key] = _Tail(tuple(tokens[aligned:]), tail_block, until, slot)

    def take_tail(self, ns: str, tokens: list[int], matched: int) -> tuple[int, int] | None:
        """The held tail that continues ``tokens[:matched]`` (block-aligned) with the next
        tokens of ``tokens``: (block, tokens it holds), handed over with its reference (and
        its window slot's, with ``slots``), or None.

        A tail goes to one taker: its block is written past its tokens from then on.
        """
        if not self._tails:
            return None
        key = (ns, tuple(tokens[:matched]))
        tail = self._tails.get(key)
        if tail is None or tuple(tokens[matched: matched + len(tail.tokens)]) != tail.tokens:
            return None
        if self.slots is not None and not tail.slot:
            return None  # its local KV is gone: the taker could not resume after it
        del self._tails[key]
        self.cached_blocks -= 1
        return tail.block, len(tail.tokens)

    def _drop_tail(self, key: tuple[str, Tokens]) -> int:
        tail = self._tails.pop(key, None)
        if tail is None:
            return 0
        if tail.slot:
            self.slots.drop([tail.block])
        self.pool.decref([tail.block])
        self.cached_blocks -= 1
        return 1

    def _drop_tails(self, which: Callable[[_Tail], bool], num_blocks: int) -> int:
        """Free up to ``num_blocks`` tails that ``which`` picks, those held longest ago first."""
        keys = sorted((k for k, t in self._tails.items() if which(t)),
                      key=lambda k: self._tails[k].held_until)
        return sum(self._drop_tail(k) for k in keys[:max(num_blocks, 0)])

    # ---- pins -------------------------------------------------------------

    def pin(self, ns: str, tokens: list[int], ttl: float) -> bool:
        """Protect ``tokens`` (already inserted up to its last full block) for ``ttl`` s.

        Returns False when the prefix is not in the tree.
        """
        entry = self.pins.renew(ns, tuple(tokens), ttl)
        nodes = self._full_blocks(entry)
        if nodes is None:
            return False
        self.pins.place(entry, nodes)
        self.keep_window(ns, tokens[: entry.aligned(self.bs)], entry)
        return True

    def repin(self, entry: PinEntry) -> bool:
        """Protect a disk-only entry's blocks in RAM again (they are back in the tree)."""
        nodes = self._full_blocks(entry)
        if nodes is None:
            return False
        self.pins.cover(entry, nodes)
        self.keep_window(entry.namespace, entry.tokens[: entry.aligned(self.bs)], entry)
        return True

    def _full_blocks(self, entry: PinEntry) -> list[_Node] | None:
        """The nodes of ``entry``'s full blocks, split to end with them; None if not all cached."""
        aligned = entry.aligned(self.bs)
        path, matched = self._walk(entry.namespace, entry.tokens[:aligned], split=True)
        return path if matched >= aligned else None

    def release_pins(self, num_blocks: int, keep_undisked: bool = False, num_slots: int = 0) -> int:
        """Take pinned prefixes out of RAM until evicting has freed ``num_blocks`` blocks (and
        ``num_slots`` window slots) or none is left in RAM; returns the blocks and slots freed.

        For a request that fits the pool but finds it held by pins: it must not wait
        for them to expire (minutes, or an hour). Entries with a disk copy go first and
        live on there; then those being written, which live on too (their blocks free up
        once written); the others, least recently used first, are dropped, unless
        ``keep_undisked``.
        """
        now = self.clock()
        order = self.pins.releasable(now, keep_undisked)
        freed = slots = 0
        for entry in order:
            if freed >= num_blocks and slots >= num_slots:
                break
            if entry.on_disk or entry.writing:
                self.pins.unpin_ram(entry)
            else:
                self.pins.end(entry, now)
            freed += self.evict(num_blocks - freed) if freed < num_blocks else 0
            slots += self.evict_windows(num_slots - slots)
        if order:
            self.pins.retire(now)
        return freed + slots
