"""A step of batch work stops between layers when an interactive request arrives
(engine/interactive_arrivals.py, models/stop_signal.py), and nothing it computed is lost
or changed: every sequence's tokens are those of a run that was never stopped."""
from __future__ import annotations

import pytest
import torch

from engine_driver import run
from preheat.engine.async_engine import AsyncEngine
from preheat.engine.interactive_arrivals import InteractiveArrivals
from preheat.engine.output import Finished
from preheat.engine.request import GenerationRequest, SamplingParams
from preheat.kernels.decode_stack import load_decode_stack_kernel
from preheat.models.stop_signal import StepInterrupted, StopSignal
from tiny import tiny_config, tiny_engine, tiny_weights

PARAMS = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
PROMPTS = [[(11 * i + 3 * j) % 250 for j in range(9 + 5 * i)] for i in range(3)]
QUESTION = [(5 * j + 1) % 250 for j in range(13)]


class BumpingLayer:
    """A layer that counts an interactive arrival the first time it runs (as if a request
    came in while the step was between this layer and the next)."""

    def __init__(self, layer, arrivals: InteractiveArrivals):
        self.layer, self.arrivals, self.bumped = layer, arrivals, False

    def __call__(self, *args):
        if not self.bumped:
            self.bumped = True
            self.arrivals.arrived(GenerationRequest(QUESTION, PARAMS))
        return self.layer(*args)


def finish_all(engine) -> dict[str, Finished]:
    done = {}
    while engine.has_work:
        done |= {rid: ev for rid, ev in engine.step() if isinstance(ev, Finished)}
    return done


def enqueue(engine, requests):
    for request in requests:
        engine.enqueue(engine.prepare(request))


def test_a_batch_step_stops_mid_pass_and_the_interactive_request_runs_next_with_every_token_unchanged():
    cfg = tiny_config(num_layers=3)
    weights = tiny_weights(cfg, seed=5)
    batch = [GenerationRequest(p, PARAMS) for p in PROMPTS]
    want = [f.output_ids for f in run(tiny_engine(cfg=cfg, weights=weights), batch)]
    want_question = run(tiny_engine(cfg=cfg, weights=weights), [GenerationRequest(QUESTION, PARAMS)])[0]

    arrivals = InteractiveArrivals()
    engine = tiny_engine(cfg=cfg, weights=weights, arrivals=arrivals)
    background = [GenerationRequest(p, PARAMS, background=True) for p in PROMPTS]
    enqueue(engine, background)
    engine.step()  # prefill and first tokens
    engine.step()
    seqs = [engine.scheduler.find(r.request_id) for r in background]
    before = [(s.num_computed, s.num_output) for s in seqs]

    engine.model.layers[1] = BumpingLayer(engine.model.layers[1], arrivals)
    assert engine.step() == []  # stopped before layer 2: no token, nothing committed
    assert engine.num_interrupted == 1 and engine.stats().interrupted_steps == 1
    assert [(s.num_computed, s.num_output) for s in seqs] == before

    question = GenerationRequest(QUESTION, PARAMS)
    enqueue(engine, [question])  # the request whose arrival stopped the step
    engine.step()
    assert engine.scheduler.find(question.request_id).num_output == 1  # its first token
    assert [(s.num_computed, s.num_output) for s in seqs] == before  # batch work waits
    done = finish_all(engine)
    assert done[question.request_id].output_ids == want_question.output_ids
    assert [done[r.request_id].output_ids for r in background] == want
    assert engine.num_interrupted == 1


def test_a_step_with_interactive_work_in_it_is_never_stopped():
    arrivals = InteractiveArrivals()
    engine = tiny_engine(arrivals=arrivals)
    mixed = [GenerationRequest(PROMPTS[0], PARAMS, background=True), GenerationRequest(PROMPTS[1], PARAMS)]
    enqueue(engine, mixed)
    seen = arrivals.count
    arrivals.arrived(GenerationRequest(QUESTION, PARAMS))  # after `seen`: batch work alone would stop
    engine.step(arrivals_seen=seen)
    assert engine.scheduler.find(mixed[1].request_id).num_output == 1
    assert engine.num_interrupted == 0


def test_without_an_arrival_batch_work_runs_to_the_end():
    arrivals = InteractiveArrivals()
    engine = tiny_engine(arrivals=arrivals)
    want = [f.output_ids for f in run(tiny_engine(), [GenerationRequest(p, PARAMS) for p in PROMPTS])]
    got = run(engine, [GenerationRequest(p, PARAMS, background=True) for p in PROMPTS])
    assert [f.output_ids for f in got] == want and engine.num_interrupted == 0


@pytest.mark.skipif(not load_decode_stack_kernel(), reason="needs preheat's VNNI and attention kernels")
def test_the_fused_decode_stack_stops_too_and_the_tokens_are_unchanged():
    cfg = tiny_config(num_layers=3)
    weights = tiny_weights(cfg, seed=7)
    requests = [GenerationRequest(p, PARAMS) for p in PROMPTS]
    want = [f.output_ids for f in run(tiny_engine(cfg=cfg, weights=weights, weight_format="int4"), requests)]
    arrivals = InteractiveArrivals()
    engine = tiny_engine(cfg=cfg, weights=weights, weight_format="int4", arrivals=arrivals)
    fused, is_fused = [], engine.model._fused
    engine.model._fused = lambda kv: fused.append(is_fused(kv)) or fused[-1]
    background = [GenerationRequest(p, PARAMS, background=True) for p in PROMPTS]
    enqueue(engine, background)
    engine.step()
    engine.step()
    seqs = [engine.scheduler.find(r.request_id) for r in background]
    before = [(s.num_computed, s.num_output) for s in seqs]
    seen = arrivals.count
    arrivals.arrived(GenerationRequest(QUESTION, PARAMS))
    fused.clear()
    assert engine.step(arrivals_seen=seen) == []
    assert fused == [True] and engine.num_interrupted == 1
    assert [(s.num_computed, s.num_output) for s in seqs] == before
    done = finish_all(engine)
    assert [done[r.request_id].output_ids for r in background] == want


def test_a_stop_signal_that_has_not_fired_changes_nothing():
    engine = tiny_engine()
    seqs = [engine.prepare(GenerationRequest(p, PARAMS)) for p in PROMPTS]
    for s in seqs:
        engine.scheduler.add(s)
    batch = engine.scheduler.schedule()
    cell = torch.zeros(1, dtype=torch.int64)
    with_signal = engine.runner.run(batch, seqs, StopSignal(cell, 0))
    assert torch.equal(with_signal, engine.runner.run(batch, seqs))
    cell[0] = 1
    with pytest.raises(StepInterrupted):
        engine.runner.run(batch, seqs, StopSignal(cell, 0))


async def test_the_async_engine_counts_interactive_requests_only():
    engine = AsyncEngine(tiny_engine(arrivals=InteractiveArrivals()), "tiny")
    try:
        arrivals = engine.engine.arrivals
        await engine.submit(GenerationRequest(PROMPTS[0], PARAMS, background=True))
        assert arrivals.count == 0
        await engine.submit(GenerationRequest(PROMPTS[1], PARAMS))
        assert arrivals.count == 1
    finally:
        engine.shutdown()
