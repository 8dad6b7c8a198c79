"""Engine invariants on a tiny random Llama: cache reuse, batching, memory pressure, accounting."""
import pytest
import torch

from engine_driver import GREEDY, FakeClock, ids, last_logits, run, run_one, sequence_refs
from preheat.engine.errors import EngineOverloadedError, PromptTooLongError, RequestTooLargeError
from preheat.engine.kv.kv_dtype import resolve_kv_dtype
from preheat.engine.output import Finished, StopReason, TextDelta
from preheat.engine.request import CacheBreakpoint, GenerationRequest, SamplingParams
from tiny import tiny_engine

BS = 4  # tiny_engine's block size


def held_only_by_tree(engine) -> bool:
    """No sequence leaked a block: every reference left is the radix tree's."""
    return sequence_refs(engine) == 0


@pytest.mark.parametrize("shared", [40, 42, 38], ids=["aligned", "partial_block", "mid_block_divergence"])
def test_cache_hit_equals_cold_run(shared):
    base = ids(60, 1)
    first = base[:shared] + ids(10, 2)
    second = base[:shared] + ids(12, 3)
    cold = tiny_engine()
    want_logits = last_logits(cold, second)
    want = run_one(tiny_engine(), second)

    warm = tiny_engine()
    run_one(warm, first)
    reused = len(warm.radix.match("", second)) * BS
    assert reused == shared - shared % BS  # physically served from the tree
    torch.testing.assert_close(last_logits(warm, second), want_logits, atol=1e-5, rtol=1e-5)
    assert run_one(warm, second).output_ids == want.output_ids


@pytest.mark.parametrize("kv_dtype", ["float16", "bfloat16"])
def test_16_bit_kv_cache_hit_equals_cold_run(kv_dtype):
    # A first prefill chunk attends over k/v rounded as the cache stores them: a hit reads the same.
    base = ids(60, 1)
    first, second = base[:42] + ids(10, 2), base[:42] + ids(12, 3)
    want_logits = last_logits(tiny_engine(kv_dtype=kv_dtype), second)
    want = run_one(tiny_engine(kv_dtype=kv_dtype), second)
    warm = tiny_engine(kv_dtype=kv_dtype)
    run_one(warm, first)
    assert len(warm.radix.match("", second)) * BS == 40
    torch.testing.assert_close(last_logits(warm, second), want_logits, atol=1e-5, rtol=1e-5)
    assert run_one(warm, second).output_ids == want.output_ids
    assert warm.runner.kv_cache.dtype == getattr(torch, kv_dtype)


def test_16_bit_kv_concurrent_equals_sequential():
    prompts = [ids(10 + 9 * i, 20 + i) for i in range(8)]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    sequential = [run_one(tiny_engine(kv_dtype="float16"), p, params).output_ids for p in prompts]
    batched = run(tiny_engine(kv_dtype="float16"), [GenerationRequest(p, params) for p in prompts])
    assert [b.output_ids for b in batched] == sequential


def test_kv_dtype_resolution():
    dense, int4 = tiny_engine(), tiny_engine(weight_format="int4")
    assert dense.runner.kv_cache.dtype == torch.float32  # auto: dense stays exact
    assert int4.runner.kv_cache.dtype == torch.float16  # auto: int4 halves the cache
    assert resolve_kv_dtype("bfloat16", dense.model) == torch.bfloat16
    assert resolve_kv_dtype("float32", int4.model) == torch.float32
    with pytest.raises(ValueError, match="kv dtype must be"):
        resolve_kv_dtype("int8", dense.model)


def test_prefix_shared_by_many_at_once():
    prefix = ids(48, 5)
    prompts = [prefix + ids(5 + i, 10 + i) for i in range(8)]
    want = [run_one(tiny_engine(), p).output_ids for p in prompts]
    engine = tiny_engine()
    run_one(engine, prefix + [1, 2])
    got = run(engine, [GenerationRequest(p, GREEDY) for p in prompts])
    assert [g.output_ids for g in got] == want
    assert held_only_by_tree(engine)


def test_concurrent_equals_sequential():
    prompts = [ids(10 + 9 * i, 20 + i) for i in range(8)]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    sequential = [run_one(tiny_engine(), p, params).output_ids for p in prompts]
    batched = run(tiny_engine(), [GenerationRequest(p, params) for p in prompts])
    assert [b.output_ids for b in batched] == sequential


def test_memory_pressure_preempts_and_completes():
    prompts = [ids(30, 40 + i) for i in range(6)]
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    want = [r.output_ids for r in run(tiny_engine(), [GenerationRequest(p, params) for p in prompts])]
    small = tiny_engine(kv_cache_tokens=128)  # 6 x 60 tokens do not fit at once
    got = run(small, [GenerationRequest(p, params) for p in prompts])
    assert small.scheduler.num_preemptions > 0
    assert [g.output_ids for g in got] == want
    assert held_only_by_tree(small)


def test_request_that_can_never_fit_is_rejected():
    engine = tiny_engine(kv_cache_tokens=64)
    with pytest.raises(RequestTooLargeError, match="pool holds 64"):
        engine.prepare(GenerationRequest(ids(50, 1), SamplingParams(max_tokens=30)))
    with pytest.raises(PromptTooLongError, match="1024"):
        tiny_engine().prepare(GenerationRequest(ids(1024, 1), GREEDY))


def test_overload_is_refused():
    engine = tiny_engine(max_waiting=2)
    for i in range(2):
        engine.enqueue(engine.prepare(GenerationRequest(ids(8, i), GREEDY)))
    with pytest.raises(EngineOverloadedError):
        engine.prepare(GenerationRequest(ids(8, 9), GREEDY))


def test_abort_frees_blocks_immediately():
    engine = tiny_engine(max_step_tokens=16)
    req = GenerationRequest(ids(200, 3), GREEDY)
    engine.enqueue(engine.prepare(req))
    engine.step()
    engine.step()
    assert sequence_refs(engine) == 8  # 32 tokens prefilled, 4 per block
    engine.abort(req.request_id)
    events = engine.step()
    assert [ev.stop_reason for _, ev in events] == [StopReason.ABORTED]
    assert not engine.has_work and held_only_by_tree(engine)


def test_chunked_prefill_never_stalls_running_streams():
    engine = tiny_engine(max_step_tokens=32)
    short = GenerationRequest(ids(8, 1), SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
    engine.enqueue(engine.prepare(short))
    engine.step()
    stream = engine.scheduler.find(short.request_id)
    engine.enqueue(engine.prepare(GenerationRequest(ids(600, 2), GREEDY)))
    for _ in range(20):  # the long prompt needs ~19 chunks; the stream advances every step
        before = stream.num_output
        engine.step()
        assert stream.num_output == before + 1


def test_pinned_prefix_accounting_write_read_extend_expire():
    clock = FakeClock()
    engine = tiny_engine(clock=clock)
    doc = ids(90, 7)

    def ask(prompt, *bps):
        req = GenerationRequest(prompt, GREEDY, breakpoints=tuple(CacheBreakpoint(p, t) for p, t in bps))
        return run(engine, [req])[0].usage

    u = ask(doc + [1, 2, 3], (41, 300.0), (90, 3600.0))
    assert (u.cache_read_tokens, u.cache_write_tokens, u.input_tokens) == (0, 90, 3)
    assert u.cache_write_by_ttl == {300.0: 41, 3600.0: 49}
    u = ask(doc + [4, 5], (90, 3600.0))
    assert (u.cache_read_tokens, u.cache_write_tokens, u.input_tokens) == (90, 0, 2)
    u = ask(doc[:60] + [9] * 30, (41, 300.0), (90, 300.0))  # diverges after 60: reads the 41 entry
    assert (u.cache_read_tokens, u.cache_write_tokens) == (41, 49)
    u = ask(doc + [1], (20, 300.0))  # reads may not pass the last breakpoint
    assert (u.cache_read_tokens, u.cache_write_tokens) == (0, 20)
    u = ask(doc + [1])  # no breakpoint: plain input in the accounting
    assert (u.cache_read_tokens, u.cache_write_tokens, u.input_tokens) == (0, 0, 91)
    clock.now += 3601
    u = ask(doc + [1], (90, 300.0))
    assert (u.cache_read_tokens, u.cache_write_tokens) == (0, 90)


def test_breakpoints_over_the_pin_budget_are_reported_as_plain_input():
    engine = tiny_engine(kv_cache_tokens=256, max_pinned_fraction=0.25)  # 16 of 64 blocks
    doc, other = ids(40, 1), ids(40, 2)
    run(engine, [GenerationRequest(doc + [1], GREEDY, breakpoints=(CacheBreakpoint(40, 300.0),))])
    assert engine.radix.pinned_blocks == 10
    u = run(engine, [GenerationRequest(other + [1], GREEDY, breakpoints=(CacheBreakpoint(40, 300.0),))])
    assert (u[0].usage.cache_write_tokens, u[0].usage.input_tokens) == (0, 41)
    assert engine.radix.pinned_blocks == 10 and engine.radix.pins.lookup_pin("", other, 40) == 0
    u = run(engine, [GenerationRequest(doc + [2], GREEDY, breakpoints=(CacheBreakpoint(40, 300.0),))])
    assert u[0].usage.cache_read_tokens == 40  # hits still read


def test_other_namespace_gets_no_hit():
    engine = tiny_engine()
    doc = ids(40, 3)
    bp = (CacheBreakpoint(40, 300.0),)
    run(engine, [GenerationRequest(doc + [1], GREEDY, namespace="a", breakpoints=bp)])
    u = run(engine, [GenerationRequest(doc + [1], GREEDY, namespace="b", breakpoints=bp)])[0].usage
    assert u.cache_read_tokens == 0 and u.cache_write_tokens == 40
    assert engine.radix.match("b", doc) != engine.radix.match("a", doc)


def test_prewarm_generates_nothing_but_pins():
    engine = tiny_engine()
    doc = ids(40, 4)
    bp = (CacheBreakpoint(40, 300.0),)
    warm = run(engine, [GenerationRequest(doc, SamplingParams(max_tokens=0), breakpoints=bp)])[0]
    assert warm.output_ids == [] and warm.usage.cache_write_tokens == 40
    hit = run(engine, [GenerationRequest(doc + [5], GREEDY, breakpoints=bp)])[0]
    assert hit.usage.cache_read_tokens == 40


def test_stop_reasons():
    engine = tiny_engine(context_window=40)
    out = run_one(engine, ids(30, 1), SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))
    assert out.stop_reason is StopReason.CONTEXT_WINDOW and len(out.output_ids) == 10
    out = run_one(engine, ids(10, 1), SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    assert out.stop_reason is StopReason.MAX_TOKENS and len(out.output_ids) == 5


def test_eos_stops_generation():
    engine = tiny_engine()
    prompt = ids(12, 2)
    free = run_one(engine, prompt, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    eos = free.output_ids[5]
    engine._eos = frozenset({eos})  # pretend the 6th greedy token is the model's EOS
    out = run_one(engine, prompt, SamplingParams(max_tokens=40, temperature=0))
    assert out.stop_reason is StopReason.EOS
    assert out.output_ids == free.output_ids[: free.output_ids.index(eos) + 1]


def test_stop_sequence_ends_generation_and_is_cut():
    engine = tiny_engine()
    prompt = ids(12, 2)
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    text = run_one(engine, prompt, params).text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert len(stop) == 2
    out = run_one(engine, prompt, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True,
                                                 stop=(stop,)))
    assert out.stop_reason is StopReason.STOP_SEQUENCE and out.stop_sequence == stop
    assert out.text == text[: text.index(stop)]


def test_seeded_sampling_is_reproducible_in_any_batch():
    params = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=123, ignore_eos=True)
    prompt = ids(16, 8)
    alone = run_one(tiny_engine(), prompt, params).output_ids
    batch = run(tiny_engine(), [GenerationRequest(prompt, params)] +
                [GenerationRequest(ids(9, i), SamplingParams(max_tokens=20, temperature=1.0))
                 for i in range(3)])
    assert batch[0].output_ids == alone


def test_text_deltas_concatenate_to_final_text():
    engine = tiny_engine()
    req = GenerationRequest(ids(10, 3), SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    engine.enqueue(engine.prepare(req))
    deltas, final = [], None
    while engine.has_work:
        for _, ev in engine.step():
            if isinstance(ev, TextDelta):
                deltas.append(ev.text)
            else:
                final = ev
    assert "".join(deltas) == final.text


def test_pins_never_keep_a_request_that_fits_the_pool_waiting():
    engine = tiny_engine(kv_cache_tokens=96, max_pinned_fraction=0.75)  # 24 blocks, 18 pinnable
    for seed in (1, 2):
        doc = ids(36, seed)
        run(engine, [GenerationRequest(doc + [1], GREEDY, breakpoints=(CacheBreakpoint(36, 300.0),))])
    assert engine.radix.pinned_blocks == 18
    # 40 prompt tokens + 16 output need 14 blocks; the pins leave 6: one pin must go.
    seq = engine.prepare(GenerationRequest(ids(40, 3), GREEDY))
    engine.enqueue(seq)
    finished = []
    for _ in range(200):  # bounded: a request stuck behind pins would never finish
        finished += [ev for _, ev in engine.step() if isinstance(ev, Finished)]
        if not engine.has_work:
            break
    assert [f.output_tokens for f in finished] == [16]
    assert engine.radix.pinned_blocks == 9  # the older pin was ended, the newer one kept
    assert engine.radix.pins.lookup_pin("", ids(36, 2), 36) == 36


def test_a_held_reply_is_found_by_the_next_turn_and_counted():
    """A thread's turn holds its prompt and reply; the next turn's prompt finds them cached."""
    engine = tiny_engine()
    prompt = ids(22, seed=5)
    first = run(engine, [GenerationRequest(prompt, GREEDY, hold_seconds=60.0)])[0]
    before = engine.stats()
    follow_up = prompt + first.output_ids + ids(9, seed=6)
    warm = run(engine, [GenerationRequest(follow_up, GREEDY)])[0]
    after = engine.stats()
    assert warm.output_ids == run(tiny_engine(), [GenerationRequest(follow_up, GREEDY)])[0].output_ids
    assert after.prompt_tokens - before.prompt_tokens == len(follow_up)
    # All of it, its last partial block too: only the last sampled token never ran.
    computed = len(prompt) + len(first.output_ids) - 1
    assert computed % engine.pool.block_size  # the case a tail serves
    assert after.prompt_tokens_cached - before.prompt_tokens_cached == computed


def poison(engine, where: str, bad: str) -> None:
    """Make the engine fail wherever request ``bad`` takes part in ``where``."""
    if where == "forward":
        real = engine.runner.run

        def run_unless_bad(batch, sample_from, stop=None):
            if any(s.id == bad for s, _ in batch.items()):
                raise RuntimeError("injected forward failure")
            return real(batch, sample_from, stop)
        engine.runner.run = run_unless_bad
    else:
        real = engine._sample_batch

        def sample_unless_bad(seqs, logits):
            if any(s.id == bad for s in seqs):
                raise RuntimeError("injected sampling failure")
            return real(seqs, logits)
        engine._sample_batch = sample_unless_bad


@pytest.mark.parametrize("where", ["forward", "sampling"])
def test_a_failure_of_one_sequence_fails_it_alone(where):
    prompts = [ids(30, 70 + i) for i in range(4)]
    want = [run_one(tiny_engine(), p).output_ids for p in prompts]
    engine = tiny_engine()
    reqs = [GenerationRequest(p, GREEDY) for p in prompts]
    poison(engine, where, reqs[1].request_id)
    for r in reqs:
        engine.enqueue(engine.prepare(r))
    done = {}
    while engine.has_work:
        for rid, ev in engine.step():
            if isinstance(ev, Finished | Exception):
                done[rid] = ev
    assert isinstance(done[reqs[1].request_id], Exception)
    assert [done[r.request_id].output_ids for r in (reqs[0], *reqs[2:])] == [want[0], *want[2:]]
    assert engine.stats().failed == 1 and held_only_by_tree(engine)
    assert run_one(engine, prompts[0]).output_ids == want[0]  # and the engine serves on


def test_background_work_pauses_while_an_interactive_request_runs():
    engine = tiny_engine(max_step_tokens=32)
    long = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    batch = [GenerationRequest(ids(8, i), long, background=True) for i in range(3)]
    for request in batch:
        engine.enqueue(engine.prepare(request))
    engine.step()
    background = [engine.scheduler.find(r.request_id) for r in batch]
    assert all(s.num_output == 1 for s in background)  # idle capacity: batch work runs
    interactive = GenerationRequest(ids(40, 9), SamplingParams(max_tokens=5, temperature=0,
                                                                ignore_eos=True))
    engine.enqueue(engine.prepare(interactive))
    done = None
    while done is None:
        for rid, event in engine.step():
            if rid == interactive.request_id and isinstance(event, Finished):
                done = event
        assert all(s.num_output == 1 for s in background)  # paused all along
    assert done.output_tokens == 5
    engine.step()
    assert all(s.num_output == 2 for s in background)  # and back once it is gone


def test_an_interactive_request_takes_a_background_slot_and_its_tokens_are_unchanged():
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    prompts = [ids(10 + i, 30 + i) for i in range(3)]
    want = [r.output_ids for r in run(tiny_engine(), [GenerationRequest(p, params)
                                                      for p in prompts])]
    engine = tiny_engine(max_running=2)
    batch = [GenerationRequest(p, params, background=True) for p in prompts[:2]]
    for request in batch:
        engine.enqueue(engine.prepare(request))
    engine.step()
    interactive = GenerationRequest(prompts[2], params)
    engine.enqueue(engine.prepare(interactive))
    engine.step()
    assert engine.scheduler.find(interactive.request_id) in engine.scheduler.running
    assert engine.scheduler.num_preemptions == 1  # the newest background sequence
    finished = {}
    while engine.has_work:
        finished |= {rid: ev for rid, ev in engine.step() if isinstance(ev, Finished)}
    got = [finished[r.request_id].output_ids for r in [*batch, interactive]]
    assert got == want and held_only_by_tree(engine)


def test_background_requests_are_never_refused_for_a_full_queue():
    engine = tiny_engine(max_waiting=2)
    for i in range(5):  # bounded by the batch runner, not by the queue
        engine.enqueue(engine.prepare(GenerationRequest(ids(8, i), GREEDY, background=True)))
    with pytest.raises(EngineOverloadedError):  # they take its places all the same
        engine.prepare(GenerationRequest(ids(8, 9), GREEDY))


def test_paced_batch_work_runs_in_short_steps_after_interactive_work_with_its_tokens_unchanged():
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    prompts = [ids(40 + i, 50 + i) for i in range(4)]
    want = [r.output_ids for r in run(tiny_engine(), [GenerationRequest(p, params)
                                                      for p in prompts])]
    engine = tiny_engine(max_step_tokens=64)
    run_one(engine, ids(8, 99))  # an interactive user was here
    pacer = engine.scheduler.pacer
    assert pacer.pacing
    pacer.interactive_step_s, pacer.cap = 1.0, 3  # as if batch work had proved slow
    batch = [GenerationRequest(p, params, background=True) for p in prompts]
    scheduled, sizes = engine.scheduler.schedule, []

    def watched():
        budget = pacer.budget()
        chosen = scheduled()
        sizes.append((budget, sum(n for _, n in chosen.items())))
        return chosen

    engine.scheduler.schedule = watched
    got = [r.output_ids for r in run(engine, batch)]
    assert all(size <= budget for budget, size in sizes)
    assert sizes[0] == (3, 3)  # the first step held 3 of the 64 tokens it could have
    assert got == want
    assert held_only_by_tree(engine)
