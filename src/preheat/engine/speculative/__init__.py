"""Speculative decoding: drafts from the prompt, the output and the tenant's earlier
replies, verified in one forward pass; exact (the tokens of decoding without it)."""
from preheat.engine.speculative.speculator import MODES, SpeculationCounters, Speculator

__all__ = ["MODES", "SpeculationCounters", "Speculator"]
