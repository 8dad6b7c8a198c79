"""Config keys that families share: the Llama-shaped core of a GGUF's ``{arch}.*`` metadata
and of a Hugging Face ``config.json``, and RoPE scaling in both."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from preheat.loader.errors import UnsupportedModelError

# Llama 3.1+ files bake their llama3 RoPE scaling into per-frequency divisors.
ROPE_FREQS = "rope_freqs.weight"


def gguf_core(meta, arch: str) -> dict[str, Any]:
    """ModelConfig fields every family reads the same way from GGUF metadata."""
    hidden = int(meta.require(f"{arch}.embedding_length"))
    heads = int(meta.require(f"{arch}.attention.head_count"))
    head_dim = int(meta.value(f"{arch}.attention.key_length",
                              meta.value(f"{arch}.rope.dimension_count", hidden // heads)))
    vocab = meta.value(f"{arch}.vocab_size") or len(meta.value("tokenizer.ggml.tokens") or [])
    if not vocab:
        raise UnsupportedModelError("the GGUF file has neither a vocab_size nor a token list")
    rope_theta = float32(meta.value(f"{arch}.rope.freq_base", 10000.0))
    return dict(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(meta.require(f"{arch}.feed_forward_length")),
        num_layers=int(meta.require(f"{arch}.block_count")),
        num_heads=heads,
        num_kv_heads=int(meta.value(f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        max_position_embeddings=int(meta.require(f"{arch}.context_length")),
        rms_norm_eps=float32(meta.require(f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=rope_theta,
        rope_scaling=gguf_rope_scaling(meta, arch, rope_theta, head_dim),
        tie_word_embeddings="output.weight" not in meta.tensor_names,
    )


def hf_core(raw: dict) -> dict[str, Any]:
    """ModelConfig fields every family reads the same way from ``config.json``; accepts both
    ``rope_theta``/``rope_scaling`` and transformers 5's ``rope_parameters``."""
    hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    rope = dict(raw.get("rope_parameters") or {})
    return dict(
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
        max_position_embeddings=int(raw["max_position_embeddings"]),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 10000.0))),
        rope_scaling=hf_rope_scaling(raw.get("rope_scaling") or rope),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )


def hf_rope_scaling(raw: dict[str, Any]) -> dict | None:
    """HF rope scaling (old `type` key, or `rope_parameters`) as a dict without `rope_theta`."""
    scaling = {k: v for k, v in raw.items() if k != "rope_theta"}
    if "type" in scaling:
        scaling["rope_type"] = scaling.pop("type")
    if scaling.get("rope_type", "default") == "default":
        return None
    return scaling


def gguf_rope_scaling(meta, arch: str, rope_theta: float, head_dim: int) -> dict | None:
    """HF-style `rope_scaling` from `{arch}.rope.scaling.*`, else inferred from `rope_freqs`."""
    kind = meta.value(f"{arch}.rope.scaling.type")
    if kind is not None and kind != "none":
        scaling: dict[str, Any] = {"rope_type": kind}
        factor = meta.value(f"{arch}.rope.scaling.factor")
        if factor is not None:
            scaling["factor"] = float32(factor)
        original = meta.value(f"{arch}.rope.scaling.original_context_length")
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    if ROPE_FREQS not in meta.tensor_names:
        return None
    dim = int(meta.value(f"{arch}.rope.dimension_count", head_dim))
    return _llama3_scaling(meta.tensor_values(ROPE_FREQS), rope_theta, dim)


def _llama3_scaling(divisors: np.ndarray, rope_theta: float, dim: int) -> dict:
    """Recover llama3 RoPE parameters from llama.cpp's per-frequency divisors.

    llama.cpp's converter always uses low/high frequency factors 1 and 4 around an 8192 context
    (it never reads those from the HF config), so only `factor` varies: it is the largest divisor.
    The guess is verified by recomputing every divisor.
    """
    scaling = {
        "rope_type": "llama3",
        "factor": float32(divisors.max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    if not np.allclose(_llama3_divisors(scaling, rope_theta, dim), divisors, rtol=1e-4):
        raise UnsupportedModelError("GGUF tensor rope_freqs.weight does not match any llama3 RoPE scaling")
    return scaling


def _llama3_divisors(scaling: dict, rope_theta: float, dim: int) -> np.ndarray:
    """The per-frequency divisors llama3 scaling applies (as llama.cpp's converter writes them)."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    wavelengths = 2 * math.pi * rope_theta ** (np.arange(0, dim, 2) / dim)
    smooth = np.clip((context / wavelengths - low) / (high - low), 0.0, 1.0)
    return 1.0 / ((1.0 - smooth) / factor + smooth)


def float32(value: float) -> float:
    """GGUF stores floats as float32; use the shortest decimal that rounds to it (1e-05, not 9.99e-06)."""
    return float(str(np.float32(value)))
