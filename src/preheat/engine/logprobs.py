"""Log probabilities of generated tokens, for requests that ask (``SamplingParams.logprobs``).

A token's logprob is read from the model's own distribution at its position: the
log-softmax of the raw logits it was sampled from, before temperature, top-k/top-p or a
grammar's mask (as OpenAI and vLLM report them), with the most likely tokens there beside
it. Each row of logits is one position: a decode's last token, a prefill's last chunk, or
one row per draft token of a speculative step, so a token accepted from a draft gets the
logprob it would get decoded alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from preheat.engine.output import TokenLogprob

if TYPE_CHECKING:
    from preheat.engine.sequence import Sequence


class RowLogprobs:
    """The log-softmax of some rows of logits and their ``top`` best tokens, computed once
    for the rows together (one transfer from the device); ``of`` is a token's report at
    one row."""

    def __init__(self, logits: torch.Tensor, top: int):
        self._logprobs = torch.log_softmax(logits.float(), dim=-1)
        # one at least: a greedy token is the best one, and its logprob is then at hand
        values, ids = self._logprobs.topk(max(1, min(top, logits.shape[-1])), dim=-1)
        self._best = [list(zip(i, v, strict=True))
                      for i, v in zip(ids.tolist(), values.tolist(), strict=True)]

    def of(self, row: int, token: int, top: int) -> TokenLogprob:
        """``token``'s logprob at ``row``, and the ``top`` (at most the constructor's)
        best tokens there."""
        best = self._best[row]
        logprob = next((v for i, v in best if i == token), None)
        if logprob is None:  # a sampled token outside the best ones
            logprob = float(self._logprobs[row, token])
        return TokenLogprob(token, logprob, tuple(best[:top]))


def sampled_logprobs(seqs: list[Sequence], logits: torch.Tensor,
                     tokens: list[int | None]) -> list[TokenLogprob | None]:
    """The report of each sequence's sampled token from its row of ``logits`` (one row a
    sequence), for the sequences that ask for one; None for the rest."""
    reports: list[TokenLogprob | None] = [None] * len(seqs)
    wanted = [i for i, s in enumerate(seqs)
              if s.request.params.logprobs is not None and tokens[i] is not None]
    if wanted:
        rows = RowLogprobs(logits[wanted], max(seqs[i].request.params.logprobs for i in wanted))
        for row, i in enumerate(wanted):
            reports[i] = rows.of(row, tokens[i], seqs[i].request.params.logprobs)
    return reports
