"""Decoder blocks: how a layer's attention and MLP meet the residual stream."""
from __future__ import annotations

import torch

from preheat.layers.attention import AttentionMetadata
from preheat.layers.mlp import GatedMLP
from preheat.layers.norm import RMSNorm
from preheat.layers.rotary import RopeTables
from preheat.layers.self_attention import SelfAttention


class PreNormBlock:
    """x += attn(norm(x)); x += mlp(norm(x)): Llama, Mistral, Qwen2/3."""

    def __init__(self, attn_norm: RMSNorm, attn: SelfAttention, mlp_norm: RMSNorm, mlp: GatedMLP):
        self.attn_norm, self.attn = attn_norm, attn
        self.mlp_norm, self.mlp = mlp_norm, mlp

    def __call__(self, x: torch.Tensor, ropes: list[RopeTables], kv_cache: torch.Tensor,
                 meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), ropes, kv_cache, meta)
        return x + self.mlp(self.mlp_norm(x))


class SandwichBlock:
    """Each sub-layer normalized before and after: x += post(attn(pre(x))), likewise the
    MLP (Gemma 2 and 3)."""

    def __init__(self, norms: tuple[RMSNorm, RMSNorm, RMSNorm, RMSNorm], attn: SelfAttention, mlp: GatedMLP):
        self.pre_attn, self.post_attn, self.pre_mlp, self.post_mlp = norms
        self.attn, self.mlp = attn, mlp

    def __call__(self, x: torch.Tensor, ropes: list[RopeTables], kv_cache: torch.Tensor,
                 meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.post_attn(self.attn(self.pre_attn(x), ropes, kv_cache, meta))
        return x + self.post_mlp(self.mlp(self.pre_mlp(x)))
