"""Attention over a paged KV cache.

One engine step mixes sequences: decode tokens (one query each) come first in
the flat token batch, then prefill chunks. Every sequence's keys and values
live in fixed-size blocks of a preallocated cache, addressed by its block table.

The cache may be stored in a narrower dtype than the model's (``kv_dtype``): k and
v are rounded to it when written, and every attention, prefill included, sees
exactly those rounded values, so a cache hit reads back what the cold run used.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from preheat.kernels import paged_attention as kernel


@dataclass
class PrefillSlice:
    """A chunk of one sequence's prompt inside the flat token batch."""

    token_start: int
    num_tokens: int
    context_len: int  # cached tokens after this step, the chunk included
    block_table: torch.Tensor  # [blocks] long


@dataclass
class DecodeBatch:
    """All single-token sequences of the step, attended in one call."""

    block_tables: torch.Tensor  # [batch, max_blocks] long (padded with block 0)
    context_lens: torch.Tensor  # [batch] long: cached tokens, this step's included
    block_size: int

    @property
    def size(self) -> int:
        return self.block_tables.shape[0]

    @functools.cached_property
    def mask(self) -> torch.Tensor:
        """[batch, 1, 1, max_blocks * block_size] bool: the padded SDPA path's key mask.

        Built on first use, once per step: the paged kernel never needs it, and at long
        contexts it costs time.
        """
        keys = torch.arange(self.block_tables.shape[1] * self.block_size, device=self.block_tables.device)
        return (keys[None, :] < self.context_lens[:, None]).view(self.size, 1, 1, -1)


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [tokens] flat cache slot of each new token
    decode: DecodeBatch | None
    prefills: list[PrefillSlice]


def _gather(cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    # [blocks, block_size, kv_heads, head_dim] -> [kv_heads, blocks * block_size, head_dim]
    blocks = cache.index_select(0, block_table)
    return blocks.view(-1, *blocks.shape[-2:]).transpose(0, 1)


def _decode_gathered(q: torch.Tensor, kv_cache: torch.Tensor, batch: DecodeBatch) -> torch.Tensor:
    """The PyTorch path (GPU, or no kernel): copy each sequence's blocks out, then one padded SDPA."""
    b, num_heads, head_dim = q.shape
    kv_heads = kv_cache.shape[3]
    # Fold the query heads that share a KV head into the query axis: no KV copies for GQA.
    q = q.view(b, kv_heads, num_heads // kv_heads, head_dim)
    # index_select on the leading dim copies whole blocks: about twice as fast as fancy indexing
    flat = batch.block_tables.view(-1)
    k, v = (kv_cache[i].index_select(0, flat).view(b, -1, kv_heads, head_dim).transpose(1, 2).to(q.dtype)
            for i in (0, 1))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=batch.mask)
    return out.reshape(b, num_heads, head_dim)


def _decode(q: torch.Tensor, kv_cache: torch.Tensor, batch: DecodeBatch) -> torch.Tensor:
    if not kernel.supports(kv_cache):
        return _decode_gathered(q, kv_cache, batch)
    # Reads the blocks where they lie; its results do not depend on the batch or thread count.
    out = kernel.paged_decode_attention(q.float(), kv_cache[0], kv_cache[1], batch.block_tables,
                                        batch.context_lens, q.shape[-1] ** -0.5)
    return out.to(q.dtype)


def _as_cached(x: torch.Tensor, kv_dtype: torch.dtype) -> torch.Tensor:
    """x as a later read of the cache gives it back: rounded to the cache's dtype."""
    return x if x.dtype == kv_dtype else x.to(kv_dtype).to(x.dtype)


def _prefill(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, kv_cache: torch.Tensor,
             s: PrefillSlice) -> torch.Tensor:
    if kernel.supports(kv_cache):
        # Reads the cached context where it lies, with the chunk's own k and v (just stored)
        out = kernel.paged_prefill_attention(q.float(), kv_cache[0], kv_cache[1], s.block_table,
                                             s.context_len, q.shape[-1] ** -0.5)
        return out.to(q.dtype)
    return _prefill_gathered(q, k_new, v_new, kv_cache, s)


def _prefill_gathered(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, kv_cache: torch.Tensor,
                      s: PrefillSlice) -> torch.Tensor:
    """The PyTorch path (GPU, or no kernel): the cached context copied out, then SDPA."""
    if s.context_len == s.num_tokens:  # nothing cached before this chunk
        k, v = (_as_cached(x, kv_cache.dtype).transpose(0, 1) for x in (k_new, v_new))
    else:
        k, v = (_gather(kv_cache[i], s.block_table)[:, : s.context_len].to(q.dtype) for i in (0, 1))
    # Query i sits at absolute position context_len - num_tokens + i: causal, aligned
    # bottom-right. On a GPU the CausalBias form keeps SDPA on its fused kernel (a boolean
    # mask would materialize every score).
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k[None], v[None],
        attn_mask=causal_lower_right(s.num_tokens, s.context_len), enable_gqa=True)
    return out[0].transpose(0, 1)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                    meta: AttentionMetadata) -> torch.Tensor:
    """Store this step's k/v in the layer's cache, then attend.

    q: [tokens, heads, head_dim]; kv_cache: [2, blocks, block_size, kv_heads, head_dim]
    in the model's dtype or a narrower one (k and v are rounded to it).
    """
    slots = kv_cache.view(2, -1, *kv_cache.shape[-2:])
    slots[0].index_copy_(0, meta.slot_mapping, k.to(kv_cache.dtype))
    slots[1].index_copy_(0, meta.slot_mapping, v.to(kv_cache.dtype))
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
