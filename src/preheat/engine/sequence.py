"""One request's state inside the engine: tokens, KV blocks, progress."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from preheat.engine.detokenizer import IncrementalDetokenizer
from preheat.engine.grammar import GrammarState
from preheat.engine.kv.pin_table import PinEntry
from preheat.engine.output import CacheUsage, TokenLogprob
from preheat.engine.request import GenerationRequest
from preheat.engine.speculative.draft_state import DraftState


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    usage: CacheUsage
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None
    max_total_tokens: int  # context window: generation stops here
    token_ids: list[int] = field(default_factory=list)
    num_prompt_tokens: int = 0
    num_computed: int = 0  # tokens whose KV is in the cache
    block_table: list[int] = field(default_factory=list)
    num_inserted_blocks: int = 0  # leading blocks already handed to the radix tree
    # sliding-window layers (engine/kv/window_slots.py): it holds the window slots of
    # block_table[window_from:], and the tree keeps a window at each of resume_points
    # (block-aligned positions ahead of it) once it has passed them
    window_from: int = 0
    resume_points: list[int] = field(default_factory=list)
    pending_pins: list = field(default_factory=list)  # breakpoints not yet pinned, by position
    pinned_hit: PinEntry | None = None  # the pinned prefix its cache read came from
    pending_load: str | None = None  # disk key of that entry while its blocks are read back
    grammar: GrammarState | None = None  # where its output stands in its grammar, if any
    admitted: bool = False  # has been scheduled once
    reused_prompt_tokens: int = 0  # prompt tokens the cache had at its first admission
    status: SeqStatus = SeqStatus.WAITING
    # speculative decoding: tokens proposed to follow token_ids, scored in this step
    # beside its last token (see engine/speculative/), and the state they come from
    draft: list[int] = field(default_factory=list)
    drafting: DraftState | None = None
    # logprobs of generated tokens no event has carried yet (requests that ask for them)
    unsent_logprobs: list[TokenLogprob] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token_ids = list(self.request.prompt_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.pending_pins = sorted(self.request.breakpoints, key=lambda b: b.position)

    @property
    def id(self) -> str:
        return self.request.request_id

    @property
    def namespace(self) -> str:
        return self.request.namespace

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def remaining_prefill(self) -> int:
        """Tokens still to run before the next sample (1 while decoding)."""
        return self.num_tokens - self.num_computed

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    def take_logprobs(self) -> tuple[TokenLogprob, ...]:
        """The logprobs no event has carried yet, for the event being made."""
        if not self.unsent_logprobs:
            return ()
        taken, self.unsent_logprobs = tuple(self.unsent_logprobs), []
        return taken
