"""Attention over a paged KV cache.

One engine step mixes sequences: decode tokens (one query each) come first in
the flat token batch, then prefill chunks. Every sequence's keys and values
live in fixed-size blocks of a preallocated cache, addressed by its block table.

The cache may be stored in a narrower dtype than the model's (``kv_dtype``): k and
v are rounded to it when written, and every attention, prefill included, sees
exactly those rounded values, so a cache hit reads back what the cold run used.

Families differ in two parameters, passed per layer as an ``AttentionVariant``: the score
scale (1/sqrt(head_dim) unless the family says otherwise) and a sliding window (a local
layer's query at position p sees keys p - window < t <= p). Every layer's K and V stay in
the cache, windowed or not: a cached prefix serves local and global layers alike.
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


@dataclass(frozen=True)
class AttentionVariant:
    """What a layer's attention computes beyond softmax(q k^T) v over its causal context."""

    scale: float  # multiplies the scores
    window: int = 0  # 0: the whole context; else the last `window` positions, the query's own included


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [tokens] flat cache slot of each new token
    decode: DecodeBatch | None
    prefills: list[PrefillSlice]


@dataclass
class StepKV:
    """Where each layer's K and V live this step, and the metadata that addresses them.

    ``caches`` holds the layers that keep the whole context ([layers, 2, blocks, block_size,
    kv_heads, head_dim]); sliding-window layers may keep theirs apart (``window_caches``,
    over window slots, with ``window_meta``); ``places`` says per layer which and where."""

    caches: torch.Tensor
    meta: AttentionMetadata
    places: list[tuple[bool, int]]
    window_caches: torch.Tensor | None = None
    window_meta: AttentionMetadata | None = None

    def layer(self, i: int) -> tuple[torch.Tensor, AttentionMetadata]:
        windowed, j = self.places[i]
        if windowed:
            return self.window_caches[j], self.window_meta
        return self.caches[j], self.meta

    @property
    def uniform(self) -> bool:
        """Every layer in ``caches``, in model order."""
        return self.window_caches is None


def _gather(cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    # [blocks, block_size, kv_heads, head_dim] -> [kv_heads, blocks * block_size, head_dim]
    blocks = cache.index_select(0, block_table)
    return blocks.view(-1, *blocks.shape[-2:]).transpose(0, 1)


def _window_mask(batch: DecodeBatch, window: int) -> torch.Tensor:
    """The padded SDPA path's key mask, narrowed to each sequence's last ``window`` keys."""
    if not window:
        return batch.mask
    keys = torch.arange(batch.block_tables.shape[1] * batch.block_size, device=batch.block_tables.device)
    return batch.mask & (keys[None, :] >= batch.context_lens[:, None] - window).view(batch.size, 1, 1, -1)


def _plain(q: torch.Tensor) -> AttentionVariant:
    return AttentionVariant(q.shape[-1] ** -0.5)


def _decode_gathered(q: torch.Tensor, kv_cache: torch.Tensor, batch: DecodeBatch,
                     variant: AttentionVariant | None = None) -> torch.Tensor:
    """The PyTorch path (GPU, or no kernel): copy each sequence's blocks out, then one padded SDPA."""
    variant = variant or _plain(q)
    b, num_heads, head_dim = q.shape
    kv_heads = kv_cache.shape[3]
    # Fold the query heads that share a KV head into the query axis: no KV copies for GQA.
    q = q.view(b, kv_heads, num_heads // kv_heads, head_dim)
    # index_select on the leading dim copies whole blocks: about twice as fast as fancy indexing
    flat = batch.block_tables.view(-1)
    k, v = (kv_cache[i].index_select(0, flat).view(b, -1, kv_heads, head_dim).transpose(1, 2).to(q.dtype)
            for i in (0, 1))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_window_mask(batch, variant.window),
                                         scale=variant.scale)
    return out.reshape(b, num_heads, head_dim)


def _decode(q: torch.Tensor, kv_cache: torch.Tensor, batch: DecodeBatch,
            variant: AttentionVariant | None = None) -> torch.Tensor:
    variant = variant or _plain(q)
    if not kernel.supports(kv_cache):
        return _decode_gathered(q, kv_cache, batch, variant)
    # Reads the blocks where they lie; its results do not depend on the batch or thread count.
    out = kernel.paged_decode_attention(q.float(), kv_cache[0], kv_cache[1], batch.block_tables,
                                        batch.context_lens, variant.scale, variant.window)
    return out.to(q.dtype)


def _as_cached(x: torch.Tensor, kv_dtype: torch.dtype) -> torch.Tensor:
    """x as a later read of the cache gives it back: rounded to the cache's dtype."""
    return x if x.dtype == kv_dtype else x.to(kv_dtype).to(x.dtype)


def _prefill(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, kv_cache: torch.Tensor,
             s: PrefillSlice, variant: AttentionVariant | None = None) -> torch.Tensor:
    variant = variant or _plain(q)
    if kernel.supports(kv_cache):
        # Reads the cached context where it lies, with the chunk's own k and v (just stored)
        out = kernel.paged_prefill_attention(q.float(), kv_cache[0], kv_cache[1], s.block_table,
                                             s.context_len, variant.scale, variant.window)
        return out.to(q.dtype)
    return _prefill_gathered(q, k_new, v_new, kv_cache, s, variant)


def _prefill_mask(s: PrefillSlice, window: int):
    """Causal (bottom-right aligned), and within ``window`` keys of each query when given."""
    if not window or s.context_len <= window:
        return causal_lower_right(s.num_tokens, s.context_len)
    query = torch.arange(s.context_len - s.num_tokens, s.context_len)[:, None]
    key = torch.arange(s.context_len)[None, :]
    return (key <= query) & (key > query - window)


def _prefill_gathered(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, kv_cache: torch.Tensor,
                      s: PrefillSlice, variant: AttentionVariant | None = None) -> torch.Tensor:
    """The PyTorch path (GPU, or no kernel): the cached context copied out, then SDPA."""
    variant = variant or _plain(q)
    if s.context_len == s.num_tokens:  # nothing cached before this chunk
        k, v = (_as_cached(x, kv_cache.dtype).transpose(0, 1) for x in (k_new, v_new))
    else:
        k, v = (_gather(kv_cache[i], s.block_table)[:, : s.context_len].to(q.dtype) for i in (0, 1))
    # Query i sits at absolute position context_len - num_tokens + i: causal, aligned
    # bottom-right. On a GPU the CausalBias form keeps SDPA on its fused kernel (a boolean
    # mask would materialize every score).
    mask = _prefill_mask(s, variant.window)
    if isinstance(mask, torch.Tensor):
        mask = mask.to(q.device)
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None], v[None], attn_mask=mask,
                                         scale=variant.scale, enable_gqa=True)
    return out[0].transpose(0, 1)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                    meta: AttentionMetadata, variant: AttentionVariant | None = None) -> torch.Tensor:
    """Store this step's k/v in the layer's cache, then attend (plain causal attention
    scaled by 1/sqrt(head_dim) unless ``variant`` says otherwise).

    q: [tokens, heads, head_dim]; kv_cache: [2, blocks, block_size, kv_heads, head_dim]
    in the model's dtype or a narrower one (k and v are rounded to it).
    """
    variant = variant or _plain(q)
    slots = kv_cache.view(2, -1, *kv_cache.shape[-2:])
    slots[0].index_copy_(0, meta.slot_mapping, k.to(kv_cache.dtype))
    slots[1].index_copy_(0, meta.slot_mapping, v.to(kv_cache.dtype))
    if meta.decode is not None and not meta.prefills:  # the common step: no output assembly
        return _decode(q, kv_cache, meta.decode, variant)
    out = torch.empty_like(q)
    if meta.decode is not None:
        b = meta.decode.size
        out[:b] = _decode(q[:b], kv_cache, meta.decode, variant)
    for s in meta.prefills:
        span = slice(s.token_start, s.token_start + s.num_tokens)
        out[span] = _prefill(q[span], k[span], v[span], kv_cache, s, variant)
    return out
