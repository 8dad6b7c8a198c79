"""What one sequence carries for drafting: its own n-gram index and its draft length."""
from __future__ import annotations

from dataclasses import dataclass

from preheat.engine.speculative.draft_length import DraftLength
from preheat.engine.speculative.ngram_index import NgramIndex


@dataclass
class DraftState:
    index: NgramIndex
    length: DraftLength
