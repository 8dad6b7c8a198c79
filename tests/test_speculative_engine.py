"""Speculative decoding through the engine: the tokens are those of decoding without it.

Prompts repeat a run of tokens, so the n-gram drafter finds matches and the tiny random
model's replies (which tend to loop) accept some drafts and reject others.
"""
from __future__ import annotations

import json
from collections import Counter

import jsonschema
import pytest

from engine_driver import ids, run, run_one, sequence_refs
from preheat.engine.output import StopReason
from preheat.engine.request import GenerationRequest, SamplingParams
from preheat.kernels import paged_attention
from tiny import tiny_engine

GREEDY = SamplingParams(max_tokens=160, temperature=0, ignore_eos=True)


def prompts(n: int) -> list[list[int]]:
    return [ids(24, seed) * 3 + ids(5, 100 + seed) for seed in range(n)]


def outputs(engine, requests: list[GenerationRequest]) -> list[list[int]]:
    return [done.output_ids for done in run(engine, requests)]


def assert_same_tokens(spec, plain, prompt_list: list[list[int]]) -> None:
    """Greedy replies to ``prompt_list`` from ``spec`` are ``plain``'s, token for token."""
    def requests():
        return [GenerationRequest(list(p), GREEDY) for p in prompt_list]
    assert outputs(spec, requests()) == outputs(plain, requests())


@pytest.fixture(scope="module")
def plain():
    return tiny_engine(speculative="off")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("mode", ["ngram", "suffix"])
def test_greedy_tokens_are_those_of_decoding_without_drafts(plain, batch, mode):
    spec = tiny_engine(speculative=mode)
    assert_same_tokens(spec, plain, prompts(batch))
    c = spec.speculator.counters
    assert c.accepted > 0 and c.drafted > c.accepted  # drafts were taken and refused
    assert c.verify_tokens == c.accepted + c.verify_steps


def test_greedy_tokens_are_the_same_on_pytorchs_attention(monkeypatch):
    """Where preheat's attention kernel does not run (no AVX-512, a GPU), draft rows go
    through PyTorch's padded attention: the tokens are still those without drafts."""
    monkeypatch.setattr(paged_attention, "supports", lambda cache: False)
    spec = tiny_engine(speculative="suffix")
    assert_same_tokens(spec, tiny_engine(speculative="off"), prompts(3))
    assert spec.speculator.counters.accepted > 0


def test_drafts_are_cut_to_the_steps_token_budget(plain):
    spec = tiny_engine(speculative="ngram", max_step_tokens=3)
    assert_same_tokens(spec, plain, prompts(2))
    assert spec.speculator.counters.drafted > 0


def test_a_full_batch_drafts_nothing():
    spec = tiny_engine(speculative="suffix", speculative_max_batch=2)
    run(spec, [GenerationRequest(p, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
               for p in prompts(3)])
    assert spec.speculator.counters.drafted == 0


def test_paused_batch_work_does_not_crowd_out_an_interactive_requests_drafts(plain):
    """Batch items paused beside an interactive request are not decoded in its steps, so
    they must not count toward the full batch that drafts nothing."""
    spec = tiny_engine(speculative="ngram", speculative_max_batch=2)
    long = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    batch = [GenerationRequest(p, long, background=True) for p in prompts(4)]  # > max_batch
    for request in batch:
        spec.enqueue(spec.prepare(request))
    def decoding(request):
        seq = spec.scheduler.find(request.request_id)  # None until a step takes it in
        return seq is not None and seq.num_output > 0

    while not all(map(decoding, batch)):
        spec.step()
    assert spec.speculator.counters.drafted == 0  # a full batch of batch work
    mine = prompts(5)[-1]
    want = run(plain, [GenerationRequest(mine, GREEDY)])[0].output_ids
    got = run(spec, [GenerationRequest(mine, GREEDY)])[0].output_ids  # runs while they pause
    assert got == want
    assert spec.speculator.counters.drafted > 0


def test_a_request_may_opt_out():
    spec = tiny_engine(speculative="suffix")
    run(spec, [GenerationRequest(p, GREEDY, speculative=False) for p in prompts(2)])
    assert spec.speculator.counters.drafted == 0


def test_seeded_sampling_gives_the_same_tokens(plain):
    """Each token is drawn from its own row with the request's generator, in order, so a
    seeded reply is the same draw for draw."""
    spec = tiny_engine(speculative="suffix")
    for seed, prompt in enumerate(prompts(3)):
        params = SamplingParams(max_tokens=120, temperature=0.7, top_k=20, seed=seed,
                                ignore_eos=True)
        assert (run_one(spec, prompt, params).output_ids
                == run_one(plain, prompt, params).output_ids)
    assert spec.speculator.counters.accepted > 0


def test_sampling_keeps_the_output_distribution(plain):
    """Other seeds on each side. Each reply drafts its second token from the tenant's
    earlier replies (the suffix index), and its third is drawn from the draft's row
    whenever the second equalled the draft: the distribution of both must be that of
    decoding without drafts."""
    spec = tiny_engine(speculative="suffix")
    prompt = [7, 8, 9, 10] * 6 + [7, 8]
    n = 1200

    def draw(engine, first_seed: int) -> Counter:
        reqs = [GenerationRequest(list(prompt), SamplingParams(
            max_tokens=3, temperature=1.0, top_k=4, seed=first_seed + i, ignore_eos=True))
            for i in range(n)]
        # four at a time: a fuller batch would draft nothing
        done = [d for i in range(0, n, 4) for d in run(engine, reqs[i:i + 4])]
        return Counter(tuple(d.output_ids[1:]) for d in done)

    with_drafts, without = draw(spec, 0), draw(plain, 10**6)
    c = spec.speculator.counters
    assert c.accepted > n // 10 and c.drafted - c.accepted > n // 10
    for key in set(with_drafts) | set(without):
        p = (with_drafts[key] + without[key]) / (2 * n)
        spread = (2 * p * (1 - p) / n) ** 0.5
        assert abs(with_drafts[key] - without[key]) / n <= 4.5 * spread + 1e-9, key


def test_stop_sequences_end_the_reply_inside_an_accepted_draft(plain):
    prompt = prompts(1)[0]
    free = run_one(plain, prompt, GREEDY)
    stop = free.text[40:43]  # somewhere a draft is likely to be running
    params = SamplingParams(max_tokens=160, temperature=0, ignore_eos=True, stop=(stop,))
    spec = tiny_engine(speculative="ngram")
    a, b = run_one(spec, prompt, params), run_one(plain, prompt, params)
    assert (a.stop_reason, a.stop_sequence, a.text, a.output_ids) == (
        b.stop_reason, b.stop_sequence, b.text, b.output_ids)
    assert a.stop_reason is StopReason.STOP_SEQUENCE


SCHEMA = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 12},
                                           "b": {"type": "integer"}},
          "required": ["a", "b"], "additionalProperties": False}


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_drafts_that_break_the_grammar_never_reach_the_output(plain, temperature):
    """The prompt repeats text that is no JSON: drafts from it are refused by the grammar's
    picks, and the reply is the grammar-constrained one without drafts."""
    grammar = "start: %json " + json.dumps({**SCHEMA, "x-guidance": {"whitespace_flexible": False}})
    prompt = list(b'{"a": "xy", "b": 1} not json at all; ' * 4 + b'{"a": "')
    params = SamplingParams(max_tokens=80, temperature=temperature, seed=5, grammar=grammar)
    spec = tiny_engine(speculative="ngram")
    done = run_one(spec, prompt, params)
    assert done.output_ids == run_one(plain, prompt, params).output_ids
    jsonschema.validate(json.loads(done.text), SCHEMA)
    assert spec.speculator.counters.drafted > 0


def test_preempted_sequences_give_the_same_tokens(plain):
    """A pool too small for all of them at once: sequences are preempted and recomputed."""
    spec = tiny_engine(speculative="suffix", kv_cache_tokens=400)
    assert_same_tokens(spec, plain, prompts(4))
    assert spec.scheduler.num_preemptions > 0 and spec.speculator.counters.accepted > 0


def test_refused_drafts_leave_no_blocks_and_no_stale_kv(plain):
    """After drafts were refused, no sequence holds a block, and a prompt that runs through
    the blocks drafts were written to reads the cold run's tokens from the cache."""
    spec = tiny_engine(speculative="ngram")
    prompt = prompts(1)[0]
    first = run_one(spec, prompt, GREEDY)
    assert spec.speculator.counters.drafted > spec.speculator.counters.accepted
    assert sequence_refs(spec) == 0
    assert spec.pool.num_free + spec.radix.cached_blocks == spec.pool.num_blocks
    follow_up = prompt + first.output_ids  # the reply's KV, drafts' slots rewritten, is cached
    hit = run_one(spec, follow_up, GREEDY)
    assert hit.reused_prompt_tokens >= len(prompt)
    assert hit.output_ids == run_one(plain, follow_up, GREEDY).output_ids


def test_a_tenants_second_request_drafts_from_its_first_reply(plain):
    """The reply is not in the prompt, so only the tenant's earlier reply can draft it;
    another tenant's request gets nothing from it."""
    prompt = ids(40, 7)
    params = SamplingParams(max_tokens=80, temperature=0, ignore_eos=True)
    expected = run_one(plain, prompt, params).output_ids
    spec = tiny_engine(speculative="suffix")
    assert run_one(spec, prompt, params, namespace="a").output_ids == expected
    accepted = spec.speculator.counters.accepted
    assert run_one(spec, prompt, params, namespace="b").output_ids == expected
    other = spec.speculator.counters.accepted - accepted
    assert run_one(spec, prompt, params, namespace="a").output_ids == expected
    again = spec.speculator.counters.accepted - accepted - other
    assert again >= 60 and again > 4 * max(other, 1)
