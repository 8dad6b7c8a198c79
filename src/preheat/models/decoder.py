"""A decoder-only transformer as every supported family runs it.

Token embeddings (scaled where the family scales them), a stack of blocks that each family
builds from ``layers/``, a final RMSNorm and the LM head (soft-capped where the family caps
it). The model knows nothing of scheduling: it maps a flat batch of tokens plus attention
metadata to hidden states, reading and writing the paged KV cache.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from preheat.layers.attention import AttentionMetadata, StepKV
from preheat.layers.norm import RMSNorm
from preheat.layers.rotary import RopeTables, RotaryEmbedding
from preheat.models.config import ModelConfig
from preheat.models.stop_signal import StepInterrupted, StopSignal

# A block: (x, the step's rope tables, its layer's KV cache, metadata) -> x
Block = Callable[[torch.Tensor, list[RopeTables], torch.Tensor, AttentionMetadata], torch.Tensor]


@dataclass
class DecoderParts:
    """What a family hands ``DecoderModel``: built layers, and the few knobs around them."""

    embed: Callable[[torch.Tensor], torch.Tensor]
    blocks: list[Block]
    norm: RMSNorm
    head: Callable[[torch.Tensor], torch.Tensor]
    ropes: list[RotaryEmbedding]  # a block's attention names its table by index
    embed_scale: float | None = None  # Gemma multiplies embeddings by sqrt(hidden)
    logit_softcap: float | None = None  # logits = cap * tanh(logits / cap)


class DecoderModel:
    """``forward`` returns final hidden states; ``logits`` projects the rows that get sampled.

    ``weight_format`` is how the matmuls hold their weights (``models/weights.py``):
    "native" (a quantized file's own weights on the quantized matmul kernel), "dense" or "int4".
    """

    def __init__(self, cfg: ModelConfig, parts: DecoderParts, device: torch.device, dtype: torch.dtype,
                 weight_format: str):
        self.cfg = cfg
        self.device, self.dtype = device, dtype
        self.weight_format = weight_format
        self.parts = parts
        self.layers = parts.blocks
        self.lm_head = parts.head
        # A family's fused path for pure decode steps (models/llama.py), or None.
        self.decode_stack = None

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: StepKV,
                stop: StopSignal | None = None) -> torch.Tensor:
        """input_ids, positions: [tokens]; ``kv``: each layer's cache and attention metadata.

        With ``stop``, the pass checks it before each layer and raises StepInterrupted once it fired."""
        p = self.parts
        x = p.embed(input_ids).to(self.dtype)
        if p.embed_scale is not None:
            x = x * torch.tensor(p.embed_scale, dtype=self.dtype)
        ropes = [rope.tables(positions) for rope in p.ropes]
        x = self.run_blocks(x, ropes, kv, stop)
        return p.norm(x)

    def run_blocks(self, x: torch.Tensor, ropes: list[RopeTables], kv: StepKV,
                   stop: StopSignal | None) -> torch.Tensor:
        for i, block in enumerate(self.layers):
            if stop is not None and stop.fired():
                raise StepInterrupted
            x = block(x, ropes, *kv.layer(i))
        return x

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project only the positions that get sampled: the LM head is the costliest matmul."""
        logits = self.lm_head(hidden).float()
        cap = self.parts.logit_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap
