"""Pick the next token of each sequence from its logits."""
from __future__ import annotations

import torch

from preheat.engine.request import SamplingParams


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """A per-request RNG so a seeded request is reproducible whatever it is batched with."""
    if params.greedy:
        return None
    gen = torch.Generator()
    if params.seed is not None:
        gen.manual_seed(params.seed)
    else:
        gen.seed()
    return gen


def _filter(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    if params.top_k > 0 and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop tokens once the mass before them already reaches top_p; the first always stays.
        drop = (cum - sorted_logits.softmax(-1)) >= params.top_p
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> list[int]:
    """logits: [seqs, vocab] float32 on any device; returns one token id per row."""
    logits = logits.float().cpu()
    out = logits.argmax(dim=-1).tolist()
    for i, (p, gen) in enumerate(zip(params, generators, strict=True)):
        if p.greedy:
            continue
        probs = _filter(logits[i] / p.temperature, p).softmax(-1)
        out[i] = int(torch.multinomial(probs, 1, generator=gen).item())
    return out
