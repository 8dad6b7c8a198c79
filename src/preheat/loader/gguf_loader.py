"""GGUF file -> `ModelConfig` and a state dict with Hugging Face Llama tensor names.

Dequantization is delegated to `gguf.quants.dequantize`; this module only maps names, restores
PyTorch shape order and undoes llama.cpp's q/k row permutation.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.gguf_reader import ReaderTensor
from gguf.quants import dequantize

from preheat.loader.errors import UnsupportedModelError
from preheat.models.config import ModelConfig

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
# llama.cpp's converter interleaves the q/k rows of these so its RoPE can rotate adjacent pairs;
# qwen2 is converted unpermuted because llama.cpp runs it with rotate-half ("NEOX") RoPE.
_PERMUTED_ARCHITECTURES = frozenset({"llama", "mistral"})

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# Llama 3.1+ files bake their llama3 RoPE scaling into per-frequency divisors; the config
# carries the scaling instead, so the tensor itself is not part of the state dict.
_ROPE_FREQS = "rope_freqs.weight"


def read_gguf(path: Path) -> GGUFReader:
    """Open (memory-map) a GGUF file."""
    return GGUFReader(path)


def gguf_architecture(reader: GGUFReader) -> str:
    """`general.architecture`, checked against the architectures preheat can run."""
    arch = _value(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    return arch


def gguf_config(reader: GGUFReader) -> ModelConfig:
    """Build the model config from `{arch}.*` metadata and the tensor inventory."""
    arch = gguf_architecture(reader)

    def key(name: str, default: Any = None) -> Any:
        value = _value(reader, f"{arch}.{name}", default)
        if value is None:
            raise UnsupportedModelError(f"GGUF metadata is missing {arch}.{name}")
        return value

    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", key("rope.dimension_count", hidden // heads)))
    tensor_names = {t.name for t in reader.tensors}
    vocab = _value(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    rope_theta = _float32(key("rope.freq_base", 10000.0))
    return ModelConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_layers=int(key("block_count")),
        num_heads=heads,
        num_kv_heads=int(key("attention.head_count_kv", heads)),
        head_dim=head_dim,
        max_position_embeddings=int(key("context_length")),
        rms_norm_eps=_float32(key("attention.layer_norm_rms_epsilon")),
        rope_theta=rope_theta,
        rope_scaling=_rope_scaling(reader, arch, rope_theta, head_dim),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
    )


def gguf_weight_count(reader: GGUFReader) -> int:
    """How many tensors `gguf_weights` yields (for progress reporting)."""
    return sum(t.name != _ROPE_FREQS for t in reader.tensors)


def gguf_matmul_type(reader: GGUFReader) -> str:
    """The GGML type holding most of the decoder's matrix weights, e.g. "Q4_1" (or "Q4_K"
    for a Q4_K_M file, whose few Q6_K matrices hold fewer weights)."""
    weights: Counter[str] = Counter()
    for t in reader.tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            weights[t.tensor_type.name] += int(t.n_elements)
    return weights.most_common(1)[0][0] if weights else "F32"


def gguf_weights(
    reader: GGUFReader, config: ModelConfig, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(hf_name, tensor)` for every weight, dequantized to `dtype` on CPU, in HF layout."""
    permute = gguf_architecture(reader) in _PERMUTED_ARCHITECTURES
    for tensor in reader.tensors:
        if tensor.name == _ROPE_FREQS:
            continue
        name = hf_tensor_name(tensor.name)
        weight = torch.from_numpy(_dequantize(tensor))
        if permute and (".q_proj." in name or ".k_proj." in name):
            heads = config.num_heads if ".q_proj." in name else config.num_kv_heads
            weight = unpermute_rows(weight, heads)
        yield name, weight.to(dtype).contiguous()


def hf_tensor_name(gguf_name: str) -> str:
    """Map a llama.cpp tensor name to its Hugging Face Llama name."""
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    match = _BLOCK_NAME.fullmatch(gguf_name)
    if match is None or match.group(2) not in _BLOCK_TENSORS:
        raise UnsupportedModelError(f"unexpected tensor {gguf_name!r} in GGUF file")
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{_BLOCK_TENSORS[part]}.{kind}"


def unpermute_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k permutation (interleaved RoPE pairs -> rotate-half layout).

    llama.cpp stores each head's rows as (pair, half); HF expects (half, pair), i.e. the
    first half of a head's rows holds the first element of every rotated pair.
    """
    rows = weight.shape[0]
    half = rows // num_heads // 2
    shaped = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return shaped.transpose(1, 2).reshape(weight.shape)


def _dequantize(tensor: ReaderTensor) -> np.ndarray:
    """Float32 values of one tensor in PyTorch (row-major) shape order."""
    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as exc:
        raise UnsupportedModelError(
            f"tensor {tensor.name!r} uses GGML type {tensor.tensor_type.name}, which gguf cannot dequantize"
        ) from exc
    # GGUF lists dimensions fastest-varying first, the reverse of PyTorch's order.
    values = values.reshape(tuple(int(d) for d in reversed(tensor.shape)))
    # F32 data is a read-only view of the memory map; the state dict must own its memory.
    return values if values.flags.writeable else values.copy()


def _rope_scaling(reader: GGUFReader, arch: str, rope_theta: float, head_dim: int) -> dict | None:
    """HF-style `rope_scaling` from `{arch}.rope.scaling.*`, else inferred from `rope_freqs`."""
    kind = _value(reader, f"{arch}.rope.scaling.type")
    if kind is not None and kind != "none":
        scaling: dict[str, Any] = {"rope_type": kind}
        factor = _value(reader, f"{arch}.rope.scaling.factor")
        if factor is not None:
            scaling["factor"] = _float32(factor)
        original = _value(reader, f"{arch}.rope.scaling.original_context_length")
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    freqs = next((t for t in reader.tensors if t.name == _ROPE_FREQS), None)
    if freqs is None:
        return None
    dim = int(_value(reader, f"{arch}.rope.dimension_count", head_dim))
    return _llama3_scaling(_dequantize(freqs), rope_theta, dim)


def _llama3_scaling(divisors: np.ndarray, rope_theta: float, dim: int) -> dict:
    """Recover llama3 RoPE parameters from llama.cpp's per-frequency divisors.

    llama.cpp's converter always uses low/high frequency factors 1 and 4 around an 8192 context
    (it never reads those from the HF config), so only `factor` varies: it is the largest divisor.
    The guess is verified by recomputing every divisor.
    """
    scaling = {
        "rope_type": "llama3",
        "factor": _float32(divisors.max()),
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


def _float32(value: float) -> float:
    """GGUF stores floats as float32; use the shortest decimal that rounds to it (1e-05, not 9.99e-06)."""
    return float(str(np.float32(value)))


def _value(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    return default if field is None else field.contents()
