"""Drafts for decoding sequences, verified by the model in the next step.

Each decoding sequence may get up to k draft tokens a step: the continuation of the
latest earlier occurrence of its last few tokens in its own prompt and output
(``ngram_index.py``), or in what its tenant's earlier replies said (``suffix_index.py``),
whichever matched the longer tail. The runner scores the sequence's last token and its
draft in one pass (a row each, as a decode step scores one), and the engine accepts draft
tokens while each equals what the sequence would have produced anyway: the tokens are
those of decoding without speculation. Drafts stop once a step decodes more sequences
than ``max_batch``: a full batch already shares each weight read among its rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from preheat.engine.speculative.draft_length import DraftLength
from preheat.engine.speculative.draft_state import DraftState
from preheat.engine.speculative.ngram_index import NgramIndex
from preheat.engine.speculative.suffix_index import SuffixIndex

if TYPE_CHECKING:  # a sequence carries a DraftState: importing it here would be a cycle
    from preheat.engine.sequence import Sequence

MODES = ("off", "ngram", "suffix")


@dataclass
class SpeculationCounters:
    """Since the engine started (``/metrics``)."""

    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # of those, accepted
    verify_steps: int = 0  # sequence-steps that verified a draft
    verify_tokens: int = 0  # tokens those steps produced (accepted drafts + one each)


class Speculator:
    def __init__(self, mode: str = "suffix", max_tokens: int = 8, max_batch: int = 4):
        if mode not in MODES:
            raise ValueError(f"speculative must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.max_tokens = max_tokens
        self.max_batch = max_batch
        self.suffixes = SuffixIndex() if mode == "suffix" else None
        self.counters = SpeculationCounters()

    @property
    def enabled(self) -> bool:
        return self.mode != "off" and self.max_tokens > 0

    def propose(self, decoding: list[Sequence]) -> None:
        """Set ``draft`` on each of the step's decoding sequences (empty for most)."""
        crowded = len(decoding) > self.max_batch
        for seq in decoding:
            seq.draft = [] if crowded or not self.enabled else self._draft(seq)

    def observe(self, seq: Sequence, drafted: int, accepted: int, produced: int) -> None:
        """A verified draft: ``accepted`` of ``drafted`` tokens, ``produced`` tokens in all."""
        c = self.counters
        c.drafted += drafted
        c.accepted += accepted
        c.verify_steps += 1
        c.verify_tokens += produced
        if seq.drafting is not None:
            seq.drafting.length.observe(drafted, accepted)

    def finished(self, seq: Sequence) -> None:
        """Keep a finished reply for its tenant's later drafts."""
        if self.suffixes is not None and seq.request.speculative and seq.num_output > 0:
            self.suffixes.add(seq.namespace, seq.token_ids[:seq.num_prompt_tokens], seq.output_ids)

    def _draft(self, seq: Sequence) -> list[int]:
        if not seq.request.speculative:
            return []
        if seq.drafting is None:
            seq.drafting = DraftState(NgramIndex((5, 4, 3)), DraftLength(self.max_tokens))
        params = seq.request.params
        k = min(seq.drafting.length.allowed(),
                params.max_tokens - seq.num_output - 1,  # the step adds one token past them
                seq.max_total_tokens - seq.num_tokens - 1)
        if k <= 0:
            return []
        n, draft = seq.drafting.index.propose(seq.token_ids, k)
        if self.suffixes is not None:
            m, other = self.suffixes.propose(seq.namespace, seq.token_ids, k)
            if m > n or (m == n and len(other) > len(draft)):
                draft = other
        return draft
