"""Pick the next token of each sequence from its logits."""
from __future__ import annotations

import torch

from preheat.engine.grammar import GrammarCompiler, GrammarState, apply_masks
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
        probs = sorted_logits.softmax(-1)
        # Drop tokens once the mass before them already reaches top_p. The first always
        # stays, however small top_p is (one below float32's range compares as 0).
        drop = (probs.cumsum(-1) - probs) >= params.top_p
        drop[0] = False
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


def _sample_row(logits: torch.Tensor, params: SamplingParams,
                generator: torch.Generator | None) -> int:
    """One token from one row's distribution at ``params.temperature``."""
    # Scale after subtracting the maximum: the best token's logit becomes 0 and the rest
    # non-positive, so a temperature near 0 gives -inf (probability 0), never inf or NaN.
    scaled = (logits - logits.max()) / params.temperature
    probs = _filter(scaled, params).softmax(-1)
    if not torch.isfinite(probs).all() or probs.sum() <= 0:
        return int(logits.argmax())  # nothing left to sample from (every token masked)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None],
           masks: torch.Tensor | None = None) -> list[int]:
    """logits: [seqs, vocab] float32 on any device; returns one token id per row.

    ``masks`` ([seqs, vocab/32] int32 bitmasks, see grammar.py) limits each row to the
    tokens its grammar allows.
    """
    logits = logits.float().cpu()
    if masks is not None:
        logits = apply_masks(logits, masks)
    out = logits.argmax(dim=-1).tolist()
    for i, (p, gen) in enumerate(zip(params, generators, strict=True)):
        if p.greedy:
            continue
        out[i] = _sample_row(logits[i], p, gen)
    return out


def sample_constrained(logits: torch.Tensor, params: list[SamplingParams],
                       generators: list[torch.Generator | None],
                       grammars: list[GrammarState | None],
                       compiler: GrammarCompiler) -> list[int]:
    """Like ``sample``; a row with a grammar gets a token its grammar allows.

    Each row's pick without the grammar is tried first. When the grammar allows it, it
    is exactly what sampling under the grammar's mask gives (greedy: the best allowed
    token; temperature alone: rejection sampling from the masked distribution, which
    resamples under the mask on a refusal), so most tokens cost a check of a few
    microseconds instead of a whole mask. Rows whose top-k/top-p must see the mask
    before filtering are masked up front.
    """
    upfront = [g if g is not None and not p.greedy and p.filters else None
               for g, p in zip(grammars, params, strict=True)]
    tokens = sample(logits, params, generators, compiler.masks(upfront))
    refused = [i for i, g in enumerate(grammars)
               if g is not None and upfront[i] is None and not g.allows(tokens[i])]
    if refused:
        again = sample(logits[refused], [params[i] for i in refused],
                       [generators[i] for i in refused],
                       compiler.masks([grammars[i] for i in refused]))
        for i, token in zip(refused, again, strict=True):
            tokens[i] = token
    return tokens
