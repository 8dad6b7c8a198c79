"""Attention over a paged KV cache.

One engine step mixes sequences: decode tokens (one query each) come first in
the flat token batch, then prefill chunks. Every sequence's keys and values
live in fixed-size blocks of a preallocated cache, addressed by its block table.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


@dataclass
class PrefillSlice:
    """A chunk of one sequence's prompt inside the flat token batch."""

    token_start: int
    num_tokens: int
    context_len: int  # cached tokens after this step, the chunk included
    block_table: torch.Tensor  # [blocks] long


@dataclass
class DecodeBatch:
    """All single-token sequences of the step, attended in one padded call."""

    block_tables: torch.Tensor  # [batch, max_blocks] long (padded with block 0)
    mask: torch.Tensor  # [batch, 1, 1, max_blocks * block_size] bool

    @property
    def size(self) -> int:
        return self.block_tables.shape[0]


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [tokens] flat cache slot of each new token
    decode: DecodeBatch | None
    prefills: list[PrefillSlice]


def _gather(cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    # [blocks, block_size, kv_heads, head_dim] -> [kv_heads, blocks * block_size, head_dim]
    blocks = cache.index_select(0, block_table)
    return blocks.view(-1, *blocks.shape[-2:]).transpose(0, 1)


def _decode(q: torch.Tensor, kv_cache: torch.Tensor, batch: DecodeBatch) -> torch.Tensor:
    b, num_heads, head_dim = q.shape
    kv_heads = kv_cache.shape[3]
    # Fold the query heads that share a KV head into the query axis: no KV copies for GQA.
    q = q.view(b, kv_heads, num_heads // kv_heads, head_dim)
    # index_select on the leading dim copies whole blocks: about twice as fast as fancy indexing
    flat = batch.block_tables.view(-1)
    k, v = (kv_cache[i].index_select(0, flat).view(b, -1, kv_heads, head_dim).transpose(1, 2)
            for i in (0, 1))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=batch.mask)
    return out.reshape(b, num_heads, head_dim)


def _prefill(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, kv_cache: torch.Tensor,
             s: PrefillSlice) -> torch.Tensor:
    if s.context_len == s.num_tokens:
        k, v = k_new.transpose(0, 1), v_new.transpose(0, 1)  # nothing cached before this chunk
    else:
        k = _gather(kv_cache[0], s.block_table)[:, : s.context_len]
        v = _gather(kv_cache[1], s.block_table)[:, : s.context_len]
    # Query i sits at absolute position context_len - num_tokens + i: causal, aligned
    # bottom-right. The CausalBias form keeps SDPA on its fused kernel (a boolean mask
    # would materialize every score).
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k[None], v[None],
        attn_mask=causal_lower_right(s.num_tokens, s.context_len), enable_gqa=True)
    return out[0].transpose(0, 1)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                    meta: AttentionMetadata) -> torch.Tensor:
    """Store this step's k/v in the layer's cache, then attend.

    q: [tokens, heads, head_dim]; kv_cache: [2, blocks, block_size, kv_heads, head_dim].
    """
    slots = kv_cache.view(2, -1, *kv_cache.shape[-2:])
    slots[0].index_copy_(0, meta.slot_mapping, k)
    slots[1].index_copy_(0, meta.slot_mapping, v)
    if meta.decode is not None and not meta.prefills:  # the common step: no output assembly
        return _decode(q, kv_cache, meta.decode)
    out = torch.empty_like(q)
    if meta.decode is not None:
        b = meta.decode.size
        out[:b] = _decode(q[:b], kv_cache, meta.decode)
    for s in meta.prefills:
        span = slice(s.token_start, s.token_start + s.num_tokens)
        out[span] = _prefill(q[span], k[span], v[span], kv_cache, s)
    return out
