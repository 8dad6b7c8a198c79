"""Engine configuration: one dataclass, filled from CLI flags or environment."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class EngineConfig:
    model: str | None = None  # None = embedded SmolLM2; else a .gguf path or an HF folder
    device: str = "cpu"
    dtype: str = "float32"
    # "dense" (exact), "int4" (4-bit decoder weights: fast CPU decode) or "auto": int4 on a
    # CPU with preheat's VNNI kernel when the file's decoder weights are 4-bit already, else dense
    weight_format: str = "auto"
    # KV cache storage: "float32", "float16", "bfloat16" or "auto" (see engine/kv_dtype.py)
    kv_dtype: str = "auto"
    block_size: int = 16
    kv_cache_tokens: int = 32768  # pool size in tokens (ignored when kv_cache_bytes is set)
    kv_cache_bytes: int | None = None
    max_step_tokens: int = 512  # token budget of one engine step (prefill chunk + decodes)
    max_running: int = 64  # sequences decoding at once
    max_waiting: int = 256  # queued requests before new ones are refused as overloaded
    max_pinned_fraction: float = 0.75  # share of the pool that pinned prefixes may hold
    context_window: int | None = None  # None = the model's own
    cache_dir: Path | None = None  # converted-weights cache; None = user cache dir
    num_threads: int | None = None  # torch intra-op threads; None = torch's default
