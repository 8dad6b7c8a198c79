"""Logprobs of generated tokens (``SamplingParams.logprobs``) on the tiny in-process model:
each token's is the log-softmax of the logits it was sampled from, its alternatives are the
best tokens there, and speculative steps that accept several tokens report each as decoding
them one by one does.
"""
from __future__ import annotations

import pytest
import torch

from engine_driver import ids, last_logits
from preheat.engine.output import Finished, TextDelta, TokenLogprob
from preheat.engine.request import GenerationRequest, SamplingParams
from tiny import tiny_engine

TOKENS = 12


def events_of(engine, requests: list[GenerationRequest]) -> dict[str, list]:
    """Every event of each request, in order, all submitted at once."""
    for request in requests:
        engine.enqueue(engine.prepare(request))
    events: dict[str, list] = {r.request_id: [] for r in requests}
    while engine.has_work:
        for rid, event in engine.step():
            events[rid].append(event)
    return events


def reported(events: list) -> tuple[Finished, list[TokenLogprob]]:
    """The request's end, and the logprobs its events carried, in order."""
    logprobs = [lp for e in events if isinstance(e, (TextDelta, Finished)) for lp in e.logprobs]
    return events[-1], logprobs


def generate(engine, prompt: list[int],
             params: SamplingParams) -> tuple[Finished, list[TokenLogprob]]:
    request = GenerationRequest(list(prompt), params)
    return reported(events_of(engine, [request])[request.request_id])


def reference(prompt: list[int], output: list[int]) -> list[torch.Tensor]:
    """log_softmax of the logits at each output position, one position at a time on a fresh
    engine (no drafts, no batch)."""
    engine = tiny_engine(speculative="off")
    return [torch.log_softmax(last_logits(engine, prompt + output[:i]).float(), dim=-1)
            for i in range(len(output))]


@pytest.fixture(scope="module")
def engine():
    return tiny_engine(speculative="off")


def test_a_greedy_tokens_logprob_is_log_softmax_of_its_logits_and_its_alternatives_the_best(engine):
    prompt = ids(20, seed=1)
    done, logprobs = generate(engine, prompt, SamplingParams(max_tokens=TOKENS, temperature=0,
                                                             ignore_eos=True, logprobs=5))
    assert [lp.token_id for lp in logprobs] == done.output_ids and len(logprobs) == TOKENS
    for lp, ref in zip(logprobs, reference(prompt, done.output_ids), strict=True):
        assert lp.logprob == pytest.approx(ref[lp.token_id].item(), abs=1e-5)
        values, best = ref.topk(5)
        assert [t for t, _ in lp.top] == best.tolist()
        assert [v for _, v in lp.top] == pytest.approx(values.tolist(), abs=1e-5)
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        assert lp.top[0] == (lp.token_id, lp.logprob)  # greedy: the best token
        assert lp.logprob <= 0


def test_a_sampled_tokens_logprob_is_of_the_raw_distribution_not_the_tempered_one(engine):
    """Temperature, top-p and top-k shape what is drawn, not what is reported; a token
    outside the best ones is reported too, and ``logprobs=0`` reports no alternatives."""
    prompt = ids(16, seed=2)
    params = SamplingParams(max_tokens=TOKENS, temperature=1.7, top_p=0.95, seed=5,
                            ignore_eos=True, logprobs=0)
    done, logprobs = generate(engine, prompt, params)
    assert [lp.token_id for lp in logprobs] == done.output_ids
    for lp, ref in zip(logprobs, reference(prompt, done.output_ids), strict=True):
        assert lp.logprob == pytest.approx(ref[lp.token_id].item(), abs=1e-5)
        assert lp.top == ()


def test_each_token_is_reported_once_with_the_text_it_wrote_or_at_the_end(engine):
    """A token's logprob travels with the first text event after it, or with ``Finished``
    (a token whose text is held back: here, a possible start of the stop string)."""
    prompt = ids(24, seed=3)
    free = generate(engine, prompt, SamplingParams(max_tokens=TOKENS, temperature=0,
                                                   ignore_eos=True))[0]
    stop = free.text[5:7]  # cut in the middle: some text is held back until it isn't
    request = GenerationRequest(list(prompt), SamplingParams(
        max_tokens=TOKENS, temperature=0, ignore_eos=True, stop=(stop,), logprobs=2))
    events = events_of(engine, [request])[request.request_id]
    done, logprobs = reported(events)
    assert [lp.token_id for lp in logprobs] == done.output_ids
    assert len(logprobs) == done.output_tokens
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert all(e.logprobs for e in deltas)
    assert sum(len(e.logprobs) for e in deltas) == deltas[-1].output_tokens


def test_nothing_is_reported_to_requests_that_do_not_ask(engine):
    a = GenerationRequest(ids(12, seed=4), SamplingParams(max_tokens=6, temperature=0,
                                                          ignore_eos=True, logprobs=3))
    b = GenerationRequest(ids(12, seed=5), SamplingParams(max_tokens=6, temperature=0,
                                                          ignore_eos=True))
    events = events_of(engine, [a, b])  # batched together
    assert len(reported(events[a.request_id])[1]) == 6
    assert reported(events[b.request_id])[1] == []


@pytest.mark.parametrize("mode", ["ngram", "suffix"])
def test_tokens_accepted_several_a_step_are_reported_as_decoding_one_by_one_reports_them(
        engine, mode):
    """A repeating prompt makes the drafter propose, and the tiny model accepts some drafts
    whole: each accepted token's logprob comes from its own row of the verify step."""
    spec = tiny_engine(speculative=mode)
    params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True, logprobs=3)
    for seed in range(3):
        prompt = ids(24, seed) * 3 + ids(5, 100 + seed)
        drafted, spec_logprobs = generate(spec, prompt, params)
        plain, plain_logprobs = generate(engine, prompt, params)
        assert drafted.output_ids == plain.output_ids
        for a, b in zip(spec_logprobs, plain_logprobs, strict=True):
            assert a.token_id == b.token_id
            assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
            assert [t for t, _ in a.top] == [t for t, _ in b.top]
            assert [v for _, v in a.top] == pytest.approx([v for _, v in b.top], abs=1e-5)
    counters = spec.speculator.counters
    assert counters.accepted > counters.verify_steps / 2  # several tokens a step, often
