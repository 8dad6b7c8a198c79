"""Whether grammar text compiles, known without a tokenizer or torch.

The API checks the grammar it built for a request (tools, an output format) before the
engine ever sees it, so a schema llguidance cannot take is a 400 rather than a failed
request; the engine compiles it for real against its tokenizer (``grammar.py``).
"""
from __future__ import annotations

import llguidance


def check_grammar(grammar: str) -> str | None:
    """Why ``grammar`` cannot be compiled, or None when it can."""
    return llguidance.LLMatcher.validate_grammar(grammar) or None
