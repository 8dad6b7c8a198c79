"""The attention half of a decoder block, shared by every family.

q, k and v come from one matmul; families that normalize each query and key head (Qwen3,
Gemma 3) pass their RMSNorms; rotary embedding turns q and k, the paged cache stores k and
v, and the layer's ``AttentionVariant`` (score scale, sliding window) shapes the softmax.
"""
from __future__ import annotations

import torch

from preheat.layers.attention import AttentionMetadata, AttentionVariant, paged_attention
from preheat.layers.norm import RMSNorm
from preheat.layers.rotary import RopeTables, apply_rotary


class SelfAttention:
    def __init__(self, qkv, o, *, heads: int, kv_heads: int, head_dim: int, variant: AttentionVariant,
                 rope: int = 0, q_norm: RMSNorm | None = None, k_norm: RMSNorm | None = None):
        """``rope`` indexes the model's rotary tables (families with two bases have two)."""
        self.qkv, self.o = qkv, o
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.variant = variant
        self.rope = rope
        self.q_norm, self.k_norm = q_norm, k_norm

    def __call__(self, h: torch.Tensor, ropes: list[RopeTables], kv_cache: torch.Tensor,
                 meta: AttentionMetadata) -> torch.Tensor:
        heads, kv_heads = self.heads, self.kv_heads
        qkv = self.qkv(h).view(-1, heads + 2 * kv_heads, self.head_dim)
        qk = qkv[:, : heads + kv_heads]
        if self.q_norm is not None:
            qk = torch.cat([self.q_norm(qk[:, :heads]), self.k_norm(qk[:, heads:])], dim=1)
        # q and k heads are adjacent: one rotation covers both.
        qk = apply_rotary(qk, *ropes[self.rope])
        attn = paged_attention(qk[:, :heads], qk[:, heads:], qkv[:, heads + kv_heads:], kv_cache, meta,
                               self.variant)
        return self.o(attn.reshape(-1, heads * self.head_dim))
