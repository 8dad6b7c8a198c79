"""Grammar-constrained decoding in the engine: whatever the weights say, the output matches.

A random-weight model knows nothing of JSON, so every valid document it writes is
the grammar's doing.
"""
import json
import math
from collections import Counter

import jsonschema
import pytest
import torch

from engine_driver import last_logits, run
from preheat.engine.errors import EngineError
from preheat.engine.grammar import GrammarCompiler, apply_masks
from preheat.engine.grammar_check import check_grammar
from preheat.engine.output import StopReason
from preheat.engine.request import GenerationRequest, SamplingParams
from preheat.engine.sampler import sample_constrained
from tiny import byte_grammar_tokenizer, tiny_engine

OPTIONS = {"whitespace_flexible": False}
SCHEMAS = [
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": -5, "maximum": 40}},
     "required": ["n"], "additionalProperties": False},
    {"type": "object", "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 1,
                 "maxItems": 3},
        "ok": {"type": "boolean"}},
     "required": ["color", "tags"], "additionalProperties": False},
    {"type": "object", "properties": {
        "id": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "inner": {"type": "object", "properties": {"x": {"type": "number", "minimum": 0,
                                                         "maximum": 1}},
                  "required": ["x"], "additionalProperties": False}},
     "required": ["id", "inner"], "additionalProperties": False},
]


def grammar_of(schema: dict) -> str:
    return "start: %json " + json.dumps({**schema, "x-guidance": OPTIONS}) + "\n"


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_random_weights_write_valid_json_under_a_schema(engine, schema, temperature):
    params = SamplingParams(max_tokens=200, temperature=temperature, seed=3,
                            grammar=grammar_of(schema))
    for prompt in ([1, 2, 3], [40, 50, 60, 70]):
        done = run(engine, [GenerationRequest(prompt, params)])[0]
        assert done.stop_reason is StopReason.EOS, done.text
        jsonschema.validate(json.loads(done.text), schema)


def test_constrained_and_free_requests_batch_without_touching_each_other(engine):
    free = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    alone = run(engine, [GenerationRequest([9, 8, 7], free)])[0]
    constrained = SamplingParams(max_tokens=200, temperature=0, grammar=grammar_of(SCHEMAS[1]))
    together = run(engine, [GenerationRequest([5, 6], constrained),
                            GenerationRequest([9, 8, 7], free),
                            GenerationRequest([1, 1], constrained)])
    assert together[1].output_ids == alone.output_ids
    for done in (together[0], together[2]):
        jsonschema.validate(json.loads(done.text), SCHEMAS[1])


def test_greedy_tokens_are_the_best_allowed_ones_at_every_step(engine):
    """Trying the grammar-free pick first never changes a greedy token (reference: mask
    every step by hand)."""
    grammar = grammar_of(SCHEMAS[1])
    for prompt in ([5, 6], [70, 80, 90]):
        done = run(engine, [GenerationRequest(prompt, SamplingParams(
            max_tokens=60, temperature=0, grammar=grammar))])[0]
        state, ids = engine.grammars.compile(grammar), list(prompt)
        for token in done.output_ids:
            masked = apply_masks(last_logits(engine, ids)[None], engine.grammars.masks([state]))
            assert token == int(masked.argmax())
            assert state.advance(token)
            ids.append(token)


def sample_often(params: SamplingParams, n: int = 3000) -> Counter:
    """Tokens drawn from a byte vocabulary where 'c' is likeliest but the grammar allows
    only 'a' (p 0.2) and 'b' (p 0.1)."""
    compiler = GrammarCompiler(byte_grammar_tokenizer)
    logits = torch.full((1, 260), -30.0)
    logits[0, ord("a")], logits[0, ord("b")], logits[0, ord("c")] = (
        math.log(0.2), math.log(0.1), math.log(0.7))
    gen = torch.Generator().manual_seed(0)
    return Counter(chr(sample_constrained(logits, [params], [gen],
                                          [compiler.compile('start: /[ab]/\n')], compiler)[0])
                   for _ in range(n))


def test_sampling_under_a_grammar_follows_the_masked_distribution():
    counts = sample_often(SamplingParams(temperature=1.0))
    assert set(counts) == {"a", "b"}
    assert abs(counts["a"] / 3000 - 2 / 3) < 0.04  # 0.2 / (0.2 + 0.1)


def test_top_k_sees_the_mask_before_it_trims():
    """Top-2 of the allowed tokens is a and b; top-2 of all tokens would leave only a."""
    counts = sample_often(SamplingParams(temperature=1.0, top_k=2))
    assert set(counts) == {"a", "b"} and abs(counts["a"] / 3000 - 2 / 3) < 0.04


def test_a_grammar_that_does_not_compile_is_refused_at_prepare(engine):
    with pytest.raises(EngineError, match="grammar"):
        engine.prepare(GenerationRequest([1, 2], SamplingParams(grammar="start: undefined_rule")))
    assert check_grammar("start: undefined_rule")
    assert check_grammar(grammar_of(SCHEMAS[0])) is None


def test_apply_masks_keeps_exactly_the_allowed_ids():
    logits = torch.zeros(2, 70)
    masks = torch.zeros(2, 2, dtype=torch.int32)  # 64 ids: 64..69 are past the mask
    masks[0, 0] = 1 << 3
    masks[0, 1] = -(1 << 31)  # id 63: the sign bit of an int32 word
    masks[1] = -1
    out = apply_masks(logits, masks)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [3, 63]
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == list(range(64))

