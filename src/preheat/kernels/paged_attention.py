"""Attention over the paged KV cache (``paged_attention.cpp``): built once per machine, on first use.

PyTorch's path gathers every block of a sequence's context into a dense tensor and then
runs SDPA: at long contexts that copy costs as much as the attention itself, and a prompt
chunk after cached context needs a masked SDPA that runs at a third of the FMA units'
pace. These kernels read each K and V row where it lies in the cache (float32, float16 or
bfloat16): decode for a batch of one-token sequences, prefill for one sequence's chunk of
prompt tokens (causal, over everything cached before it). Their results do not depend on
the batch or the thread count.

It needs a CPU with AVX-512F, or AVX2 with FMA and F16C, and a C++ compiler (ninja comes
with preheat); one source builds for either (sums are ordered by register width, so the two
agree within float rounding, and each is invariant on its own). Where neither is there,
``load_attention_kernel`` says so once and returns False, and attention takes the PyTorch
path.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from preheat.kernels.build import AVX2, AVX512, build_kernel, widest

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("paged_attention.cpp")
CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def load_attention_kernel() -> bool:
    """Register ``torch.ops.preheat.paged_decode_attention``, compiling it on a first run; False if it cannot run."""
    isa = widest(AVX512, AVX2)
    if isa is None:
        logger.info("this CPU has neither AVX-512F nor AVX2: attention gathers the KV cache for PyTorch's SDPA")
        return False
    logger.info("loading the %s paged attention kernel (a first start on this machine compiles it)", isa.name)
    return build_kernel("preheat_attention", SOURCE, ["-O3", "-fopenmp", *isa.flags],
                        what=f"{isa.name} paged attention kernel",
                        fallback="attention gathers the KV cache for PyTorch's SDPA")


def supports(kv_cache: torch.Tensor) -> bool:
    """Whether the kernel can attend over this cache ([2, blocks, block_size, kv_heads, head_dim])."""
    head_dim = kv_cache.shape[-1]
    return (kv_cache.device.type == "cpu" and kv_cache.dtype in CACHE_DTYPES
            and head_dim % 16 == 0 and 0 < head_dim <= 256 and load_attention_kernel())


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor,
                           scale: float, window: int = 0) -> torch.Tensor:
    """softmax(scale q k^T) v per sequence over its cached context (its last ``window``
    tokens when window > 0); requires ``load_attention_kernel()``.

    q: [batch, heads, head_dim] float32; k_cache, v_cache: [blocks, block_size, kv_heads,
    head_dim]; block_tables: [batch, max_blocks]; context_lens: [batch] (int64 or int32).
    Returns [batch, heads, head_dim] float32.
    """
    return torch.ops.preheat.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, window)


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_table: torch.Tensor, context: int, scale: float,
                            window: int = 0) -> torch.Tensor:
    """Causal attention of a prompt chunk over its sequence's cache (position p sees keys
    p - window < t <= p when window > 0); requires ``load_attention_kernel()``.

    q: [n, heads, head_dim] float32, the queries at positions context - n .. context - 1,
    whose keys and values are already in the cache; block_table: [blocks] (int64 or int32).
    Returns [n, heads, head_dim] float32.
    """
    return torch.ops.preheat.paged_prefill_attention(q, k_cache, v_cache, block_table, context, scale, window)
