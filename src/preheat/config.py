"""Engine configuration: one dataclass, filled from CLI flags or environment."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class EngineConfig:
    model: str | None = None  # None = embedded SmolLM2; else a .gguf path or an HF folder
    chat_template: Path | None = None  # a Jinja file used instead of the model's chat template
    device: str = "cpu"
    dtype: str = "float32"
    # "dense" (exact), "int4" (lossy 4-bit decoder weights) or "auto": a GGUF's quantized
    # weights as the file has them on a CPU where preheat's quantized kernel runs, else dense
    weight_format: str = "auto"
    # KV cache storage: "float32", "float16", "bfloat16" or "auto" (see engine/kv/kv_dtype.py)
    kv_dtype: str = "auto"
    block_size: int = 16
    # KV pool size: kv_cache_bytes, else kv_cache_tokens, else a share of the memory free at
    # start (kv_cache_memory_share; None = 25% of RAM, 80% of a GPU's): see engine/kv/kv_budget.py
    kv_cache_tokens: int | None = None
    kv_cache_bytes: int | None = None
    kv_cache_memory_share: float | None = None
    # Disk tier of pinned prefixes: its folder (None = <cache_dir>/kv) and quota in bytes
    # (None = 25% of the disk's free space; 0 turns the tier off)
    kv_disk_dir: Path | None = None
    kv_disk_bytes: int | None = None
    max_step_tokens: int = 512  # token budget of one engine step (prefill chunk + decodes)
    max_running: int = 64  # sequences decoding at once
    # while interactive users are about, what a newcomer may wait for of Message Batches' work
    # (a layer of a step: steps of it stop between layers) takes about a quarter of one of
    # their steps, and at least this (engine/background_pacer.py; -1: never paced)
    batch_step_ms: float = 2.0
    # speculative decoding (engine/speculative/): "off", "ngram" (drafts from the request's
    # own prompt and output) or "suffix" (and from its tenant's earlier replies)
    speculative: str = "suffix"
    speculative_tokens: int = 16  # the longest draft
    speculative_max_batch: int = 4  # no drafts in a step that decodes more sequences
    max_waiting: int = 256  # queued requests before new ones are refused as overloaded
    max_pinned_fraction: float = 0.75  # share of the pool that pinned prefixes may hold
    context_window: int | None = None  # None = the model's own
    cache_dir: Path | None = None  # file hashes, the KV disk tier, stores; None = user cache dir
    num_threads: int | None = None  # torch intra-op threads; None = torch's default
