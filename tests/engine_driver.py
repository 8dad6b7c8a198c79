"""Drive a synchronous LLMEngine to completion in tests (no threads)."""
from __future__ import annotations

import torch

from preheat.engine.llm_engine import LLMEngine
from preheat.engine.output import Finished
from preheat.engine.request import GenerationRequest, SamplingParams

GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)


def run(engine: LLMEngine, requests: list[GenerationRequest]) -> list[Finished]:
    """Submit all at once (they batch together) and step until every one finishes."""
    seqs = [engine.prepare(r) for r in requests]
    for s in seqs:
        engine.enqueue(s)
    done: dict[str, Finished] = {}
    while engine.has_work:
        for rid, ev in engine.step():
            if isinstance(ev, Finished):
                done[rid] = ev
    return [done[r.request_id] for r in requests]


def run_one(engine: LLMEngine, prompt: list[int], params: SamplingParams = GREEDY, **kw) -> Finished:
    return run(engine, [GenerationRequest(list(prompt), params, **kw)])[0]


def last_logits(engine: LLMEngine, prompt: list[int], namespace: str = "") -> torch.Tensor:
    """Logits after the whole prompt, through the scheduler (chunking, cache reuse included)."""
    seq = engine.prepare(GenerationRequest(list(prompt), GREEDY, namespace=namespace))
    engine.scheduler.add(seq)
    while True:
        batch = engine.scheduler.schedule()
        done = [s for s, n in batch.items() if s.num_computed + n == s.num_tokens]
        logits = engine.runner.run(batch, done)
        engine.scheduler.commit(batch)
        if done:
            engine.scheduler.finish(seq)
            return logits[0]


def sequence_refs(engine: LLMEngine) -> int:
    """Block references held by sequences (all references minus the radix tree's own)."""
    total = sum(engine.pool.refcount(b) for b in range(engine.pool.num_blocks))
    return total - engine.radix.cached_blocks


def ids(n: int, seed: int) -> list[int]:
    """``n`` random byte-tokenizer ids, the same for the same seed."""
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now
