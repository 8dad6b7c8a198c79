"""The synchronous engine core: requests in, one step at a time, events out.

Data flows one way: request -> tokens -> scheduler -> model runner -> sampler
-> detokenizer -> events. ``prepare``/``enqueue``/``abort`` may be called from
any thread; ``step`` runs on the engine thread only.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import torch

from preheat.config import EngineConfig
from preheat.engine.detokenizer import IncrementalDetokenizer
from preheat.engine.errors import (EngineError, EngineOverloadedError, PromptTooLongError,
                                   RequestTooLargeError)
from preheat.engine.grammar import GrammarCompiler, hf_grammar_tokenizer
from preheat.engine.interactive_arrivals import InteractiveArrivals
from preheat.engine.kv.block_pool import BlockPool
from preheat.engine.kv.kv_budget import pool_size
from preheat.engine.kv.kv_dtype import resolve_kv_dtype
from preheat.engine.kv.kv_layout import KVLayout
from preheat.engine.kv.kv_offload import open_disk_tier
from preheat.engine.kv.radix_cache import RadixCache
from preheat.engine.kv.window_slots import WindowSlots
from preheat.engine.model_runner import ModelRunner, kv_bytes_per_layer_block
from preheat.engine.logprobs import RowLogprobs, sampled_logprobs
from preheat.engine.output import (CacheUsage, EngineEvent, Finished, StopReason, TextDelta,
                                   TokenLogprob)
from preheat.engine.repeat_guard import RepeatGuard
from preheat.engine.request import CacheBreakpoint, GenerationRequest
from preheat.engine.sampler import make_generator, sample, sample_constrained
from preheat.engine.scheduler import ScheduledBatch, Scheduler
from preheat.engine.sequence import Sequence, SeqStatus
from preheat.engine.speculative import Speculator
from preheat.engine.stats import EngineStats
from preheat.models.decoder import DecoderModel
from preheat.models.stop_signal import StepInterrupted, StopSignal

log = logging.getLogger(__name__)

# (request id, event); an EngineError ends that request's stream
Emitted = list[tuple[str, EngineEvent | EngineError]]


def cache_usage(prompt_len: int, breakpoints: tuple[CacheBreakpoint, ...], hit: int) -> CacheUsage:
    """Anthropic's arithmetic: read = the hit; written = hit..last breakpoint, per TTL segment."""
    by_ttl: dict[float, int] = {}
    done = hit
    for bp in sorted(breakpoints, key=lambda b: b.position):
        if bp.position > done:
            by_ttl[bp.ttl] = by_ttl.get(bp.ttl, 0) + bp.position - done
            done = bp.position
    return CacheUsage(prompt_len, hit, sum(by_ttl.values()), by_ttl)


class LLMEngine:
    def __init__(self, model: DecoderModel, tokenizer, config: EngineConfig,
                 *, clock: Callable[[], float] = time.monotonic, model_digest: str | None = None,
                 grammar_tokenizer: Callable[[], object] | None = None,
                 arrivals: InteractiveArrivals | None = None):
        """``model_digest`` names the model's content; without one there is no disk tier.
        ``grammar_tokenizer`` makes llguidance's tokenizer (default: from ``tokenizer``'s).
        ``arrivals``: bumped by the engine's client per interactive request; a step of batch
        work stops between layers when it moves (``interactive_arrivals.py``)."""
        self.config = config
        self.tokenizer = tokenizer
        self.model = model
        cfg = model.cfg
        self.context_window = min(config.context_window or cfg.max_position_embeddings,
                                  cfg.max_position_embeddings)
        kv_dtype = resolve_kv_dtype(config.kv_dtype, model)
        layout = KVLayout.of(cfg.layer_windows())
        layer_block = kv_bytes_per_layer_block(cfg, config.block_size, kv_dtype)
        block_bytes, slot_bytes = layout.bytes_per_block(layer_block)
        size = pool_size(tokens=config.kv_cache_tokens, nbytes=config.kv_cache_bytes,
                         memory_share=config.kv_cache_memory_share, block_size=config.block_size,
                         bytes_per_block=layout.budget_per_block(layer_block), device=model.device)
        num_blocks = size.num_blocks
        self.pool = BlockPool(num_blocks, config.block_size)
        in_tokens = config.kv_cache_tokens is not None and config.kv_cache_bytes is None
        self.slots = (WindowSlots(layout.num_slots(num_blocks, config.block_size, config.max_step_tokens,
                                                   in_tokens),
                                  num_blocks, layout.window, config.block_size)
                      if layout.windowed else None)
        self.pool_bytes = num_blocks * block_bytes + (self.slots.num_slots * slot_bytes if self.slots else 0)
        self.radix = RadixCache(self.pool, clock=clock, slots=self.slots,
                                max_pinned_blocks=int(num_blocks * config.max_pinned_fraction))
        # With arrivals to watch, a step of batch work stops between layers for a newcomer,
        # who then waits for one layer of it rather than the whole step.
        self.scheduler = Scheduler(self.pool, self.radix, config.max_step_tokens, config.max_running,
                                   config.batch_step_ms / 1000,
                                   model.cfg.num_layers if arrivals is not None else 1)
        self.runner = ModelRunner(model, num_blocks, config.block_size, kv_dtype, layout, self.slots)
        self.speculator = Speculator(config.speculative, config.speculative_tokens,
                                     config.speculative_max_batch)
        log.info("KV cache: %d tokens in %.2f GiB of %s (%s); pinned prefixes may hold %.0f%% of it",
                 num_blocks * config.block_size, self.pool_bytes / 2**30, str(kv_dtype).removeprefix("torch."),
                 size.reason, 100 * config.max_pinned_fraction)
        if self.slots is not None:
            log.info("sliding-window layers (%d of %d, window %d): %d tokens of window slots",
                     len(layout.window_layers), cfg.num_layers, layout.window,
                     self.slots.num_slots * config.block_size)
        self.offload = open_disk_tier(config, model, self.runner, self.radix, self.pool,
                                      model_digest, clock) if model_digest else None
        self._inbox: deque[tuple[str, object]] = deque()
        self._eos = frozenset(tokenizer.eos_token_ids)
        self.grammars = GrammarCompiler(grammar_tokenizer or (lambda: hf_grammar_tokenizer(tokenizer)),
                                        num_threads=torch.get_num_threads())
        self.num_aborted = 0
        self.num_failed = 0
        self.num_interrupted = 0  # steps of batch work stopped for an interactive request
        self.arrivals = arrivals
        self._arrivals_cell = (torch.frombuffer(arrivals.buffer(), dtype=torch.int64)
                               if arrivals is not None else None)

    # ---- any thread ---------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> Sequence:
        """Validate, do the cache accounting (a pin hit refreshes it), build the sequence."""
        n, params = len(request.prompt_ids), request.params
        if n == 0:
            raise EngineError("the prompt is empty")
        if n + (1 if params.max_tokens > 0 else 0) > self.context_window:
            raise PromptTooLongError(n, self.context_window)
        most = min(n + params.max_tokens, self.context_window)
        if self.pool.blocks_for(most) > self.pool.num_blocks:
            raise RequestTooLargeError(
                f"the request needs up to {most} tokens of KV cache; the pool holds "
                f"{self.pool.num_blocks * self.pool.block_size}")
        # batch work is bounded by its runner (its few places count for interactive ones)
        if (not request.background
                and len(self._inbox) + len(self.scheduler.waiting) >= self.config.max_waiting):
            raise EngineOverloadedError("too many requests are waiting; retry later")
        bps = tuple(b for b in request.breakpoints if 0 < b.position <= n)
        last = max((b.position for b in bps), default=0)
        pins = self.radix.pins  # any thread: of the tree, only its pin table is safe to use here
        hit, entry = pins.lookup_pin_entry(request.namespace, request.prompt_ids, last) if bps else (0, None)
        new_blocks = self.pool.blocks_for(last) - hit // self.pool.block_size
        if last > hit and not self._can_pin(new_blocks):
            log.warning("pinned prefixes would exceed %d blocks; not caching this request's "
                        "breakpoints past its hit", pins.max_pinned_blocks)
            bps = tuple(b for b in bps if b.position <= hit)
        request.breakpoints = bps
        grammar = self.grammars.compile(params.grammar) if params.grammar else None
        return Sequence(
            grammar=grammar,
            pinned_hit=entry,
            request=request,
            usage=cache_usage(n, bps, hit),
            detokenizer=IncrementalDetokenizer(
                self.tokenizer.decode, request.prompt_ids, params.stop,
                RepeatGuard(params.distinct_segments) if params.distinct_segments else None),
            generator=make_generator(params),
            max_total_tokens=self.context_window,
        )

    def enqueue(self, seq: Sequence) -> None:
        self._inbox.append(("add", seq))

    def abort(self, request_id: str) -> None:
        self._inbox.append(("abort", request_id))

    @property
    def has_work(self) -> bool:
        return bool(self._inbox) or self.scheduler.has_work

    def stats(self) -> EngineStats:
        s, tier = self.scheduler, self.offload.tier if self.offload else None
        spec = self.speculator.counters
        now = self.radix.clock()
        return EngineStats(len(s.running), len(s.waiting) + len(self._inbox), self.pool.num_free,
                           self.pool.num_blocks, self.radix.cached_blocks,
                           self.radix.pinned_blocks, s.num_preemptions, self.num_aborted,
                           self.num_failed,
                           self.pool.block_size, self.pool_bytes,
                           sum(e.alive(now) for e in self.radix.pins.entries()),
                           tier.num_entries if tier else 0, tier.used_bytes if tier else 0,
                           tier.quota_bytes if tier else 0,
                           self.offload.num_reads if self.offload else 0,
                           s.prompt_tokens, s.prompt_tokens_cached, spec.drafted, spec.accepted,
                           spec.verify_steps, spec.verify_tokens, self.num_interrupted,
                           self.slots.num_slots if self.slots else 0,
                           self.slots.num_free if self.slots else 0)

    def close(self, timeout: float = 30.0) -> None:
        """Before the process ends: let queued disk writes finish (within ``timeout`` s)."""
        if self.offload is not None:
            self.offload.close(timeout)

    # ---- engine thread ------------------------------------------------------

    def step(self, arrivals_seen: int | None = None) -> Emitted:
        """Run one batch; returns (request_id, event) pairs in order.

        ``arrivals_seen``: the interactive arrivals count read before the caller last took
        in new requests (default: now, before the inbox is drained). A step of batch work
        stops, and commits nothing, once the count moves past it."""
        seen = arrivals_seen
        if seen is None and self.arrivals is not None:
            seen = self.arrivals.count
        out: Emitted = self._drain_inbox()
        self.radix.tick()
        if self.offload is not None:
            self.offload.poll()
        # Paused batch work is not part of the step: it must not make the batch look full.
        self.speculator.propose(self.scheduler.decoding())
        batch = self.scheduler.schedule()
        if not batch:
            if self.offload is not None and self.scheduler.has_work:
                # what is waiting waits on the disk tier (a read, or blocks held by a write):
                # sleep until it has news rather than spin
                self.offload.wait(0.05)
            return out
        started = time.perf_counter()
        try:
            ran, logits = self._forward(batch, self._stop_signal(batch, seen))
            self.scheduler.observe(batch, time.perf_counter() - started)
        except StepInterrupted:  # an interactive request came: it runs next, this step later
            self.num_interrupted += 1
            return out
        except Exception:
            log.exception("a batch of %d sequences failed; running each alone", len(batch.items()))
            ran, logits = self._forward_each(batch, out)
        sampled = [s for s in ran if s.request.params.max_tokens > 0 and s.num_computed == s.num_tokens]
        drafted = [s for s in sampled if s.draft]
        plain, plain_logits = sampled, logits
        if drafted:  # the logits hold 1 + len(draft) rows for these
            rows = self._rows(sampled)
            plain = [s for s in sampled if not s.draft]
            plain_logits = logits[[rows[id(s)].start for s in plain]]
        tokens = self._sample(plain, plain_logits)
        reports = sampled_logprobs(plain, plain_logits, tokens)
        for seq, token, report in zip(plain, tokens, reports, strict=True):
            out.extend(self._append(seq, token, report) if token is not None else [self._fail(seq)])
        for seq in drafted:
            out.extend(self._verify(seq, logits[rows[id(seq)]]))
        for seq in ran:
            if seq.request.params.max_tokens == 0 and seq.num_computed == seq.num_tokens:
                out.append(self._finish(seq, StopReason.MAX_TOKENS))  # pre-warm done
        return out

    @staticmethod
    def _rows(sampled: list[Sequence]) -> dict[int, slice]:
        """Each sampled sequence's rows of the step's logits (see ``ModelRunner.run``)."""
        rows, at = {}, 0
        for seq in sampled:
            rows[id(seq)] = slice(at, at + 1 + len(seq.draft))
            at += 1 + len(seq.draft)
        return rows

    def _verify(self, seq: Sequence, logits: torch.Tensor) -> Emitted:
        """Speculative decoding: take the token each row gives, as decoding would, and go on
        to the next row while the token taken is the draft's (that row saw it as input).

        Every token is picked from its own row with the sequence's sampling, grammar and
        generator, so the output is exactly that of decoding without a draft; so is its
        logprob, read from its own row."""
        draft, seq.draft = seq.draft, []
        params = seq.request.params
        greedy = params.greedy and seq.grammar is None
        picks = logits.argmax(dim=-1).tolist() if greedy else None
        rows = RowLogprobs(logits, params.logprobs) if params.logprobs is not None else None
        out: Emitted = []
        accepted = produced = 0
        for i in range(len(draft) + 1):
            token = picks[i] if picks is not None else self._sample([seq], logits[i:i + 1])[0]
            if token is None:
                return out + [self._fail(seq)]
            out += self._append(seq, token, rows.of(i, token, params.logprobs) if rows else None)
            produced += 1
            if seq.status is SeqStatus.FINISHED or i == len(draft) or token != draft[i]:
                break
            self.scheduler.advance(seq, 1)  # the draft token's KV, written this step, stands
            accepted += 1
        self.speculator.observe(seq, len(draft), accepted, produced)
        if seq.status is not SeqStatus.FINISHED:
            self.scheduler.trim(seq)
        return out

    def _stop_signal(self, batch: ScheduledBatch, seen: int | None) -> StopSignal | None:
        """What stops this step early: for a step of batch work only, an interactive arrival."""
        if self._arrivals_cell is None or seen is None:
            return None
        if not all(s.request.background for s, _ in batch.items()):
            return None
        return StopSignal(self._arrivals_cell, seen)

    def _forward(self, batch: ScheduledBatch,
                 stop: StopSignal | None = None) -> tuple[list[Sequence], torch.Tensor]:
        """Run ``batch`` and commit it: its sequences, and logits for those that sample.
        Nothing is committed if ``stop`` ends the pass (StepInterrupted)."""
        sample_from = [s for s, n in batch.items()
                       if s.num_computed + n - len(s.draft) == s.num_tokens
                       and s.request.params.max_tokens > 0]
        logits = self.runner.run(batch, sample_from, stop)
        self.scheduler.commit(batch)
        return [s for s, _ in batch.items()], logits

    def _forward_each(self, batch: ScheduledBatch, out: Emitted) -> tuple[list[Sequence], torch.Tensor]:
        """After a failed batch: each sequence alone, so only one that fails alone fails.

        Nothing was committed, and KV written for the failed batch is written again."""
        ran, rows = [], []
        for seq, n in batch.items():
            alone = (ScheduledBatch(decodes=[seq]) if seq in batch.decodes
                     else ScheduledBatch(prefills=[(seq, n)]))
            try:
                done, logits = self._forward(alone)
            except Exception:
                log.exception("request %s failed in the engine", seq.id)
                out.append(self._fail(seq))
                continue
            ran += done
            rows.append(logits)
        return ran, torch.cat(rows) if rows else torch.empty(0)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int | None]:
        """The next token of each sequence; None for one whose sampling failed."""
        if not seqs:
            return []
        try:
            return self._sample_batch(seqs, logits)
        except Exception:
            log.exception("sampling a batch of %d failed; sampling each alone", len(seqs))
        tokens: list[int | None] = []
        for i, seq in enumerate(seqs):
            try:
                tokens += self._sample_batch([seq], logits[i:i + 1])
            except Exception:
                log.exception("request %s could not be sampled", seq.id)
                tokens.append(None)
        return tokens

    def _sample_batch(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        params, generators = [s.request.params for s in seqs], [s.generator for s in seqs]
        grammars = [s.grammar for s in seqs]
        if any(g is not None for g in grammars):
            return sample_constrained(logits, params, generators, grammars, self.grammars)
        return sample(logits, params, generators)

    def abort_all(self, reason: str) -> Emitted:
        """Drop every request (after a failed step); the engine stays usable."""
        self._drain_inbox()
        out: Emitted = []
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            self.scheduler.finish(seq)
            out.append((seq.id, Finished(StopReason.ABORTED, None, seq.usage, seq.num_output,
                                         seq.output_ids, reason, seq.reused_prompt_tokens)))
        return out

    def _drain_inbox(self) -> Emitted:
        out: Emitted = []
        while self._inbox:
            kind, item = self._inbox.popleft()
            if kind == "add":
                self.scheduler.add(item)
                if self.offload is not None:
                    self.offload.on_admit(item)
            elif (seq := self.scheduler.find(item)) is not None:
                self.num_aborted += 1
                out.append(self._finish(seq, StopReason.ABORTED))
        return out

    def _fail(self, seq: Sequence) -> tuple[str, EngineError]:
        """End ``seq`` with an error after a failure of its own; the others go on."""
        self.num_failed += 1
        self.scheduler.finish(seq)
        return seq.id, EngineError("internal error in the engine")

    def _can_pin(self, new_blocks: int) -> bool:
        return self.offload.can_pin(new_blocks) if self.offload else self.radix.pins.can_pin(new_blocks)

    def _append(self, seq: Sequence, token: int, logprob: TokenLogprob | None = None) -> Emitted:
        """Add a sampled token (and its logprob, for a request that asks) to ``seq``."""
        if logprob is not None:
            seq.unsent_logprobs.append(logprob)
        try:
            return self._advance(seq, token)
        except Exception:  # a detokenizer or grammar failure is this sequence's alone
            log.exception("request %s failed after sampling", seq.id)
            return [self._fail(seq)]

    def _advance(self, seq: Sequence, token: int) -> Emitted:
        seq.token_ids.append(token)
        params = seq.request.params
        complete = seq.grammar is not None and self._advance_grammar(seq, token)
        if token in self._eos and not params.ignore_eos:
            return self._text(seq, seq.detokenizer.flush()) + [self._finish(seq, StopReason.EOS)]
        out = self._text(seq, seq.detokenizer.push(token))
        if seq.detokenizer.stop_sequence is not None:
            reason = StopReason.STOP_SEQUENCE
        elif complete or seq.detokenizer.repeated:
            reason = StopReason.EOS  # the grammar allows nothing more: the reply is whole
        elif seq.num_output >= params.max_tokens:
            reason = StopReason.MAX_TOKENS
        elif seq.num_tokens >= seq.max_total_tokens:
            reason = StopReason.CONTEXT_WINDOW
        else:
            return out
        if reason is not StopReason.STOP_SEQUENCE:
            out += self._text(seq, seq.detokenizer.flush())
            if seq.detokenizer.repeated:
                reason = StopReason.EOS  # cut short in a repeat: the reply before it is whole
        return out + [self._finish(seq, reason)]

    def _advance_grammar(self, seq: Sequence, token: int) -> bool:
        """Feed the grammar; True when it is complete (nothing may follow)."""
        if not seq.grammar.advance(token):
            # masks make this unreachable; if it happens, end the reply rather than go on blind
            log.error("request %s: the grammar rejected token %d: %s", seq.id, token,
                      seq.grammar.error)
            return True
        return seq.grammar.done

    def _text(self, seq: Sequence, text: str) -> Emitted:
        return [(seq.id, TextDelta(text, seq.num_output, seq.take_logprobs()))] if text else []

    def _finish(self, seq: Sequence, reason: StopReason) -> tuple[str, Finished]:
        if seq.request.hold_seconds > 0 and reason is not StopReason.ABORTED:
            partial = seq.num_computed % self.pool.block_size
            self.radix.hold(seq.namespace, seq.token_ids[:seq.num_computed], seq.request.hold_seconds,
                            seq.block_table[seq.num_computed // self.pool.block_size] if partial else None)
        self.scheduler.finish(seq)
        if reason is not StopReason.ABORTED:
            self.speculator.finished(seq)
        # a reply the guard ended keeps only the tokens before the repeat (what a thread stores)
        kept = seq.output_ids[:seq.detokenizer.kept_tokens]
        return seq.id, Finished(reason, seq.detokenizer.stop_sequence, seq.usage, seq.num_output,
                                kept, seq.detokenizer.text, seq.reused_prompt_tokens,
                                seq.take_logprobs())


def build_engine(config: EngineConfig, *, clock: Callable[[], float] = time.monotonic,
                 loaded=None, arrivals: InteractiveArrivals | None = None) -> tuple[LLMEngine, str]:
    """Load the configured model and wrap it in an engine; returns (engine, model_id)."""
    from preheat.loader.model_digest import model_digest
    from preheat.loader.model_loader import load_model

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    dtype = getattr(torch, config.dtype)
    loaded = loaded or load_model(config.model, dtype=dtype, cache_dir=config.cache_dir,
                                  chat_template=config.chat_template)
    model = loaded.build(torch.device(config.device), dtype, config.weight_format)
    log.info("model %s (%s, %s weights) on %s: weight format %s", loaded.model_id, loaded.family.name,
             loaded.weight_type or "float", config.device, model.weight_format)
    digest = None if config.kv_disk_bytes == 0 else model_digest(loaded.source, config.cache_dir)
    return (LLMEngine(model, loaded.tokenizer, config, clock=clock, model_digest=digest,
                      arrivals=arrivals), loaded.model_id)
