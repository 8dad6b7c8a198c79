"""Turns a scheduled batch into model inputs, runs the model, returns logits.

Owns the preallocated paged KV cache: [layers, 2, blocks, block_size, kv_heads, head_dim]
for the layers that see the whole context, and for sliding-window layers (if the model has
both) the same shape over window slots (``kv/window_slots.py``): their slot mapping and
block tables are the step's, mapped from block ids to slots.
"""
from __future__ import annotations

import math
import mmap

import torch

from preheat.engine.kv.kv_layout import KVLayout
from preheat.engine.kv.window_slots import WindowSlots
from preheat.engine.scheduler import ScheduledBatch
from preheat.engine.sequence import Sequence
from preheat.kernels.paged_attention import load_attention_kernel
from preheat.layers.attention import AttentionMetadata, DecodeBatch, PrefillSlice, StepKV
from preheat.models.config import ModelConfig
from preheat.models.decoder import DecoderModel
from preheat.models.stop_signal import StopSignal


def kv_bytes_per_layer_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one layer's block, K and V, with the cache stored as ``dtype`` (the KV dtype)."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * block_size * cfg.num_kv_heads * cfg.head_dim * elem


def _zeroed_cache(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    # An anonymous mapping is zero-filled by the OS one page at a time, on first touch: a pool
    # of many GiB costs nothing at start (torch.zeros writes every page, about 1 s a GiB here).
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).view(shape)


class ModelRunner:
    def __init__(self, model: DecoderModel, num_blocks: int, block_size: int, kv_dtype: torch.dtype,
                 layout: KVLayout | None = None, slots: WindowSlots | None = None):
        """``kv_dtype``: the cache's dtype, as ``engine/kv/kv_dtype.py`` resolves it.
        ``layout`` and ``slots``: where sliding-window layers keep their KV (default: with
        the others)."""
        cfg = model.cfg
        self.model = model
        self.device = model.device
        self.block_size = block_size
        self.kv_dtype = kv_dtype
        self.layout = layout or KVLayout.of((0,) * cfg.num_layers)
        self.slots = slots if self.layout.windowed else None
        self._places = self.layout.places()
        shape = (len(self.layout.full_layers), 2, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        self.kv_cache = _zeroed_cache(shape, kv_dtype, model.device)
        self.window_cache = None
        if self.slots is not None:
            window_shape = (len(self.layout.window_layers), 2, self.slots.num_slots, *shape[3:])
            self.window_cache = _zeroed_cache(window_shape, kv_dtype, model.device)
        if self.device.type == "cpu":
            load_attention_kernel()  # a first start compiles it: now, not in the first request

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _slots(self, seq: Sequence, start: int, n: int) -> list[int]:
        bs, table = self.block_size, seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(start, start + n)]

    def _decode_batch(self, seqs: list[Sequence]) -> DecodeBatch | None:
        """One row per decode token: a sequence's last token, then each of its draft tokens,
        each attending to the context up to itself (as decoding them one by one would)."""
        if not seqs:
            return None
        width = max(len(s.block_table) for s in seqs)
        tables: list[int] = []
        lengths: list[int] = []
        for s in seqs:
            padded = s.block_table + [0] * (width - len(s.block_table))
            for i in range(1 + len(s.draft)):
                tables += padded
                lengths.append(s.num_computed + 1 + i)
        return DecodeBatch(self._tensor(tables).view(len(lengths), width), self._tensor(lengths),
                           self.block_size)

    def step_kv(self, meta: AttentionMetadata) -> StepKV:
        """The caches of every layer for a step described by ``meta`` (block ids)."""
        if self.slots is None:
            return StepKV(self.kv_cache, meta, self._places)
        return StepKV(self.kv_cache, meta, self._places, self.window_cache, self._in_slots(meta))

    def _in_slots(self, meta: AttentionMetadata) -> AttentionMetadata:
        """``meta`` with block ids mapped to window slots (blocks without one lie before every
        window that reads them: slot 0 stands in, never attended)."""
        slot_of = self.slots.slot_of.to(self.device)

        def slots(blocks: torch.Tensor) -> torch.Tensor:
            return slot_of[blocks].clamp_(min=0)

        bs = self.block_size
        mapped = slots(meta.slot_mapping // bs) * bs + meta.slot_mapping % bs
        decode = meta.decode
        if decode is not None:
            decode = DecodeBatch(slots(decode.block_tables), decode.context_lens, bs)
        prefills = [PrefillSlice(s.token_start, s.num_tokens, s.context_len, slots(s.block_table))
                    for s in meta.prefills]
        return AttentionMetadata(mapped, decode, prefills)

    def run(self, batch: ScheduledBatch, sample_from: list[Sequence],
            stop: StopSignal | None = None) -> torch.Tensor:
        """Forward one step; returns logits for the given sequences, in their order: one row
        for a prefill chunk, ``1 + len(draft)`` rows for a decode (its last token, then each
        draft token).

        ``sample_from`` lists sequences whose last scheduled token completes their
        context (decodes and final prompt chunks); other chunks yield no logits. With
        ``stop``, the pass may end early with StepInterrupted (see ``models/stop_signal.py``).
        """
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        rows_of: dict[int, range] = {}
        prefills: list[PrefillSlice] = []
        for seq, n in batch.items():
            start = seq.num_computed
            if seq.remaining_prefill > 1:
                prefills.append(PrefillSlice(len(ids), n, start + n, self._tensor(seq.block_table)))
                rows_of[id(seq)] = range(len(ids) + n - 1, len(ids) + n)
            else:
                rows_of[id(seq)] = range(len(ids), len(ids) + n)
            ids.extend((seq.token_ids[start: start + n] + seq.draft)[:n])
            positions.extend(range(start, start + n))
            slots.extend(self._slots(seq, start, n))
        meta = AttentionMetadata(self._tensor(slots), self._decode_batch(batch.decodes), prefills)
        hidden = self.model.forward(self._tensor(ids), self._tensor(positions), self.step_kv(meta), stop)
        if not sample_from:
            return hidden.new_empty((0, self.model.cfg.vocab_size))
        rows = self._tensor([r for s in sample_from for r in rows_of[id(s)]])
        return self.model.logits(hidden[rows])
