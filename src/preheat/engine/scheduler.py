"""Continuous batching: which sequences run in the next step, and their memory.

Each step has a token budget. Sequences that are decoding get one token each
first, so running streams never wait behind a long prompt for more than one
step; the rest of the budget goes to prompt chunks (chunked prefill), oldest
first, then to admitting waiting requests. When the pool runs dry, unpinned
cache entries are evicted, and then the most recently admitted sequence is
preempted: its blocks are freed and it is recomputed later. Only when pinned
prefixes alone are in the way do they leave RAM (to their disk copy if they have
one): no request waits for a pin to expire.

A model with sliding-window layers also has window slots (``kv/window_slots.py``): a
sequence holds those of the blocks its window still reads and lets the older ones go,
after the tree has kept a window at each place a later request may resume: its
breakpoints and resume points, the end of its prompt, and where it stands when it leaves.

Batch work (``GenerationRequest.background``) fills idle capacity only: while any
interactive request is running or waiting, background sequences are not stepped (they
keep their KV, and are the first to be preempted), waiting interactive requests are
admitted ahead of them, and one that finds every running slot taken takes a background
sequence's. For a while after interactive work, steps of batch work are kept short
(``background_pacer.py``), so that the next interactive request waits little for the
stretch of the step in progress (a layer, where the step stops for it; else the step).
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from preheat.engine.background_pacer import BackgroundPacer
from preheat.engine.kv.block_pool import BlockPool
from preheat.engine.kv.radix_cache import RadixCache
from preheat.engine.kv.window_slots import WindowSlots
from preheat.engine.sequence import Sequence, SeqStatus

log = logging.getLogger(__name__)


@dataclass
class ScheduledBatch:
    """Sequences and how many new tokens each runs this step."""

    decodes: list[Sequence] = field(default_factory=list)
    prefills: list[tuple[Sequence, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.decodes or self.prefills)

    def items(self) -> list[tuple[Sequence, int]]:
        """Each sequence with its tokens this step: a decode runs its last token and its
        draft (speculative decoding), a prefill a chunk of its prompt."""
        return [(s, 1 + len(s.draft)) for s in self.decodes] + self.prefills


class Scheduler:
    def __init__(self, pool: BlockPool, radix: RadixCache, max_step_tokens: int, max_running: int,
                 batch_step_s: float = -1.0, batch_stretches: int = 1):
        self.pool = pool
        self.radix = radix
        self.slots: WindowSlots | None = radix.slots
        self.max_step_tokens = max_step_tokens
        self.max_running = max_running
        # the shortest stretch of batch work while paced (< 0: never paced), and the
        # stretches a step of it runs in (a newcomer waits for one)
        self.pacer = BackgroundPacer(max_step_tokens, batch_step_s, batch_stretches)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.num_preemptions = 0
        # prompt tokens of admitted requests, and how many of them the cache already held
        # (from any cached prefix, pinned or not, reported in usage or not)
        self.prompt_tokens = 0
        self.prompt_tokens_cached = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def find(self, request_id: str) -> Sequence | None:
        for seq in (*self.running, *self.waiting):
            if seq.id == request_id:
                return seq
        return None

    def finish(self, seq: Sequence) -> None:
        """Remove ``seq`` wherever it is and give its blocks back at once."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)
        seq.status = SeqStatus.FINISHED

    # ---- one step -----------------------------------------------------------

    def decoding(self) -> list[Sequence]:
        """The running sequences the next step decodes (batch work sits out while
        interactive work is about): those that may carry drafts."""
        return [s for s in self._steppable(self._interactive_work()) if s.remaining_prefill == 1]

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        chosen: set[int] = set()
        urgent = self._interactive_work()
        if urgent:
            self.pacer.saw_interactive()
        budget = self.max_step_tokens if urgent else self.pacer.budget()
        running = self._steppable(urgent)
        decoding = [s for s in running if s.remaining_prefill == 1]
        prefilling = [s for s in running if s.remaining_prefill > 1]
        for seq in decoding + prefilling:
            if budget == 0:
                break
            if seq.status is not SeqStatus.RUNNING:  # preempted earlier in this loop
                continue
            n = min(seq.remaining_prefill + len(seq.draft), budget)
            seq.draft = seq.draft[:n - 1]  # a draft fits the step's budget or is cut
            if not self._reserve(seq, n, chosen):
                self._preempt(seq)
                continue
            self._add(batch, seq, n, chosen)
            budget -= n
        # A request whose cached prefix is being read back from disk keeps its place in the
        # queue while the others go ahead.
        admissible = [s for s in self.waiting if s.pending_load is None
                      and not (urgent and s.request.background)]
        for seq in sorted(admissible, key=lambda s: s.request.background):  # interactive first
            if budget == 0 or not self._slot_for(seq):
                break
            self._admit(seq)
            n = min(seq.remaining_prefill, budget)
            if not self._reserve(seq, n, chosen):
                self._release(seq)
                break
            self.waiting.remove(seq)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            self._add(batch, seq, n, chosen)
            budget -= n
        return batch

    def observe(self, batch: ScheduledBatch, seconds: float) -> None:
        """How long ``batch``'s forward pass took (for the pacing of batch work)."""
        items = batch.items()
        if all(s.request.background for s, _ in items):
            self.pacer.observe_background(sum(n for _, n in items), seconds)
        else:
            self.pacer.observe_interactive(seconds)

    def _steppable(self, urgent: bool) -> list[Sequence]:
        return [s for s in self.running if not (urgent and s.request.background)]

    def _interactive_work(self) -> bool:
        return any(not s.request.background for s in (*self.running, *self.waiting))

    def _slot_for(self, seq: Sequence) -> bool:
        """Whether ``seq`` may start running: a slot is free, or it is interactive and a
        background sequence gives up its slot."""
        if len(self.running) < self.max_running:
            return True
        if seq.request.background:
            return False
        victim = next((s for s in reversed(self.running) if s.request.background), None)
        if victim is None:
            return False
        self._preempt(victim)
        return True

    def commit(self, batch: ScheduledBatch) -> None:
        """After the forward pass: advance progress, share full blocks, place pins.

        A decode's draft is not committed here: the engine advances a sequence past each
        draft token it accepts (``advance``), and ``trim`` gives back what the rest held."""
        for seq in batch.decodes:
            self.advance(seq, 1)
        for seq, n in batch.prefills:
            self.advance(seq, n)

    def advance(self, seq: Sequence, n: int) -> None:
        """``n`` more of ``seq``'s tokens have their KV in its blocks."""
        seq.num_computed += n
        full = seq.num_computed // self.pool.block_size
        if full > seq.num_inserted_blocks:
            end = full * self.pool.block_size
            self.radix.insert(seq.namespace, seq.token_ids[:end], seq.block_table[:full])
            seq.num_inserted_blocks = full
        while seq.pending_pins and seq.pending_pins[0].position <= seq.num_computed:
            bp = seq.pending_pins.pop(0)
            self.radix.pin(seq.namespace, seq.token_ids[: bp.position], bp.ttl)
        if self.slots is not None:
            self._slide(seq)

    def _slide(self, seq: Sequence) -> None:
        """Keep windows at the resume points passed, then let go of the slots no longer read.

        One block more than the window is held: a resume point just passed may lie a block
        before the tokens this step ran."""
        inserted = seq.num_inserted_blocks * self.pool.block_size
        while seq.resume_points and seq.resume_points[0] <= inserted:
            self.radix.keep_window(seq.namespace, seq.token_ids[: seq.resume_points.pop(0)])
        keep = max(seq.window_from, self.slots.first_needed(seq.num_computed) - 1)
        self.slots.drop(seq.block_table[seq.window_from: keep])
        seq.window_from = keep

    def trim(self, seq: Sequence) -> None:
        """Give back blocks held past ``seq``'s tokens (a rejected draft's); its next step
        reserves what it needs again."""
        keep = self.pool.blocks_for(seq.num_tokens)
        if len(seq.block_table) > keep:
            if self.slots is not None:
                self.slots.drop(seq.block_table[max(keep, seq.window_from):])
            self.pool.decref(seq.block_table[keep:])
            del seq.block_table[keep:]

    # ---- memory -------------------------------------------------------------

    def _add(self, batch: ScheduledBatch, seq: Sequence, n: int, chosen: set[int]) -> None:
        chosen.add(id(seq))
        if seq.remaining_prefill == 1:
            batch.decodes.append(seq)
        else:
            batch.prefills.append((seq, n))

    def _admit(self, seq: Sequence) -> None:
        # Leave at least one token to run: its logits pick the next token.
        prompt = seq.token_ids[: seq.num_tokens - 1]
        blocks = self.radix.match(seq.namespace, prompt)
        self.pool.incref(blocks)
        seq.block_table = list(blocks)
        seq.num_computed = len(blocks) * self.pool.block_size
        seq.num_inserted_blocks = len(blocks)
        if self.slots is not None:
            seq.window_from = self.slots.first_needed(seq.num_computed)
            held = self.slots.share(seq.block_table[seq.window_from:])
            assert held, "match returns only prefixes whose windows are held"
        tail = self.radix.take_tail(seq.namespace, prompt, seq.num_computed)
        if tail is not None:  # a thread's last partial block: its references are ours now
            seq.block_table.append(tail[0])
            seq.num_computed += tail[1]
        if self.slots is not None:
            bs = self.pool.block_size
            points = {p - p % bs for p in (*(bp.position for bp in seq.request.breakpoints),
                                           *seq.request.resume_points)}
            points.add(len(prompt) - len(prompt) % bs)
            seq.resume_points = sorted(p for p in points if p > seq.num_computed)
        if not seq.admitted:  # a preempted sequence coming back is not a new prompt
            seq.admitted = True
            seq.reused_prompt_tokens = seq.num_computed
            self.prompt_tokens += seq.num_prompt_tokens
            self.prompt_tokens_cached += seq.num_computed

    def _reserve(self, seq: Sequence, n: int, chosen: set[int]) -> bool:
        need = self.pool.blocks_for(seq.num_computed + n) - len(seq.block_table)
        while need > self.pool.num_free or need > self._free_slots():
            if need > self.pool.num_free and self.radix.evict(need - self.pool.num_free) > 0:
                continue
            if self.radix.evict_windows(need - self._free_slots()) > 0:
                continue
            victim = next((s for s in sorted(reversed(self.running),
                                             key=lambda s: not s.request.background)
                           if s is not seq and id(s) not in chosen), None)
            if victim is not None:
                self._preempt(victim)
                continue
            # Only pinned prefixes are left in the way: a request never waits for a pin's
            # expiry (it would wait minutes with the engine stepping idly all along).
            released = self.radix.release_pins(need - self.pool.num_free,
                                               num_slots=need - self._free_slots())
            if released == 0:
                return False
            log.warning("ended pinned prefixes to free %d KV blocks (and window slots) for a request",
                        released)
        if need > 0:
            blocks = self.pool.allocate(need)
            if self.slots is not None:
                self.slots.hold(blocks)
            seq.block_table.extend(blocks)
        return True

    def _free_slots(self) -> int:
        return self.slots.num_free if self.slots is not None else 1 << 62

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _release(self, seq: Sequence) -> None:
        if self.slots is not None:
            # where it stands is where it (preempted) or its next turn resumes
            end = seq.num_inserted_blocks * self.pool.block_size
            self.radix.keep_window(seq.namespace, seq.token_ids[:end])
            self.slots.drop(seq.block_table[seq.window_from:])
            seq.window_from = 0
            seq.resume_points = []
        self.pool.decref(seq.block_table)
        seq.block_table = []
        seq.num_computed = 0
        seq.num_inserted_blocks = 0
        seq.draft = []
