"""Sampling: greedy, temperature, top-k, top-p, seeds."""
import pytest
import torch

from preheat.engine.request import SamplingParams
from preheat.engine.sampler import make_generator, sample


def draw(logits, params, n=200):
    gen = make_generator(params)
    return [sample(logits[None], [params], [gen])[0] for _ in range(n)]


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, 0.0, 1.0]])
    p = SamplingParams(temperature=0)
    assert sample(logits, [p, p], [None, None]) == [1, 0]


def test_top_k_restricts_support():
    logits = torch.tensor([1.0, 0.9, 0.8, 0.7, -5.0])
    assert set(draw(logits, SamplingParams(temperature=1.0, top_k=2, seed=1))) <= {0, 1}


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    got = set(draw(logits, SamplingParams(temperature=1.0, top_p=0.7, seed=2)))
    assert got <= {0, 1} and len(got) == 2


def test_seed_reproducible_and_temperature_spreads():
    logits = torch.zeros(50)
    a = draw(logits, SamplingParams(temperature=1.0, seed=7), 50)
    b = draw(logits, SamplingParams(temperature=1.0, seed=7), 50)
    c = draw(logits, SamplingParams(temperature=1.0, seed=8), 50)
    assert a == b and a != c and len(set(a)) > 10


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, top_p=5.929382446550025e-208),  # below float32's range
    SamplingParams(temperature=1.0, top_p=1e-45),
    SamplingParams(temperature=1e-300),
    SamplingParams(temperature=5e-324, top_k=1),
    SamplingParams(temperature=1e-30, top_p=1e-30, top_k=3),
    SamplingParams(temperature=0.7, top_k=1),
], ids=repr)
def test_degenerate_but_valid_parameters_pick_the_top_token(params):
    logits = torch.randn(3, 5000, generator=torch.Generator().manual_seed(0)) * 4
    logits[1, 7] = float("-inf")  # a masked token is no problem either
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    assert sample(logits, [params] * 3, gens) == logits.argmax(-1).tolist()


def test_a_row_with_every_token_masked_still_gives_a_token():
    logits = torch.full((1, 10), float("-inf"))
    assert sample(logits, [SamplingParams(temperature=0.8, top_p=0.5)], [torch.Generator()]) == [0]
