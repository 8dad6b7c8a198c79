"""A GGUF file: its family, config and weights, read through the memory map one tensor at a time.

The family (``models/registry.py``) says what the file's metadata and tensor names mean;
this module only reads them. Quantized tensors are handed over as the file's blocks
(``QuantizedTensor``, a view of the map, rows permuted back where llama.cpp's converter
permuted them); ``dense`` dequantizes one tensor with ``gguf.quants.dequantize``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from preheat.loader.errors import UnsupportedModelError
from preheat.loader.gguf_file import GGUFFile, GGUFFormatError, GGUFTensor
from preheat.models import registry
from preheat.models.config import ModelConfig
from preheat.models.family import Family
from preheat.models.weights import QuantizedTensor

_FLOAT_TYPES = frozenset({GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16})


def read_gguf(path: Path) -> GGUFFile:
    """Open (memory-map) a GGUF file; a truncated or corrupted one raises UnsupportedModelError."""
    try:
        return GGUFFile(path)
    except GGUFFormatError as exc:
        raise UnsupportedModelError(str(exc)) from None


class GGUFMetadata:
    """``models/family.py``'s ``Metadata`` over a reader."""

    def __init__(self, reader: GGUFFile):
        self.reader = reader
        self.architecture = str(self.value("general.architecture"))
        self.tensor_names = frozenset(t.name for t in reader.tensors)

    def value(self, key: str, default: Any = None) -> Any:
        return self.reader.value(key, default)

    def require(self, key: str) -> Any:
        value = self.value(key)
        if value is None:
            raise UnsupportedModelError(f"GGUF metadata is missing {key}")
        return value

    def tensor_values(self, name: str) -> np.ndarray:
        return dequantize_tensor(next(t for t in self.reader.tensors if t.name == name))


def gguf_architecture(reader: GGUFFile) -> str:
    """`general.architecture`, checked against the architectures preheat can run."""
    arch = GGUFMetadata(reader).architecture
    try:
        registry.for_gguf(arch)
    except registry.UnknownArchitecture as exc:
        raise UnsupportedModelError(str(exc)) from None
    return arch


def gguf_family(reader: GGUFFile) -> Family:
    return registry.load(registry.for_gguf(gguf_architecture(reader)))


def gguf_config(reader: GGUFFile) -> ModelConfig:
    """The model config, as the file's family reads it from the metadata."""
    return gguf_family(reader).config_from_gguf(GGUFMetadata(reader))


def gguf_matmul_type(reader: GGUFFile) -> str:
    """The GGML type holding most of the decoder's matrix weights, e.g. "Q4_1" (or "Q4_K"
    for a Q4_K_M file, whose few Q6_K matrices hold fewer weights)."""
    weights: Counter[str] = Counter()
    for t in reader.tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            weights[t.tensor_type.name] += int(t.n_elements)
    return weights.most_common(1)[0][0] if weights else "F32"


class GGUFWeights:
    """``models/weights.py``'s ``Weights`` over a GGUF file, by Hugging Face name."""

    def __init__(self, reader: GGUFFile, config: ModelConfig, family: Family | None = None):
        self.reader = reader
        self.family = family or gguf_family(reader)
        self.config = config
        self.architecture = GGUFMetadata(reader).architecture
        self.tensors: dict[str, GGUFTensor] = {}
        for t in reader.tensors:
            if t.data.nbytes != t.n_bytes:
                raise UnsupportedModelError(f"{reader.path.name}: the file is truncated (tensor {t.name} "
                                            f"has {t.data.nbytes} of its {t.n_bytes} bytes)")
            name = self.family.gguf_tensor_name(t.name)
            if name is not None:
                self.tensors[name] = t

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def dense(self, name: str) -> torch.Tensor:
        # Cloned into torch's own (64-byte aligned) memory: matmul kernels may round differently
        # on numpy's alignment, and the same weights must give the same logits from any source.
        values = torch.from_numpy(dequantize_tensor(self.tensors[name])).clone()
        heads = self.family.permuted_heads(name, self.config, self.architecture)
        return values if heads is None else unpermute_rows(values, heads)

    def release(self, name: str) -> None:
        """The tensor has been copied into the model: its pages may leave this process's RSS."""
        self.reader.drop_pages(self.tensors[name])

    def quantized(self, name: str) -> QuantizedTensor | None:
        t = self.tensors[name]
        if t.tensor_type in _FLOAT_TYPES or len(t.shape) != 2:
            return None
        blocks = t.data
        heads = self.family.permuted_heads(name, self.config, self.architecture)
        if heads is not None:  # rows are whole blocks: permuting them permutes the weights' rows
            rows = blocks.shape[0]
            blocks = blocks.reshape(heads, rows // heads // 2, 2, -1).swapaxes(1, 2).reshape(rows, -1)
        return QuantizedTensor(blocks, t.tensor_type, (int(t.shape[1]), int(t.shape[0])))


def gguf_weights(reader: GGUFFile, config: ModelConfig, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(hf_name, tensor)` for every weight, dequantized to `dtype` on CPU, in HF layout."""
    weights = GGUFWeights(reader, config)
    for name in weights:
        yield name, weights.dense(name).to(dtype).contiguous()


def unpermute_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k permutation (interleaved RoPE pairs -> rotate-half layout).

    llama.cpp stores each head's rows as (pair, half); HF expects (half, pair), i.e. the
    first half of a head's rows holds the first element of every rotated pair.
    """
    rows = weight.shape[0]
    half = rows // num_heads // 2
    shaped = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return shaped.transpose(1, 2).reshape(weight.shape)


def dequantize_tensor(tensor: GGUFTensor) -> np.ndarray:
    """Float32 values of one tensor in PyTorch (row-major) shape order."""
    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as exc:
        raise UnsupportedModelError(
            f"tensor {tensor.name!r} uses GGML type {tensor.tensor_type.name}, which preheat does not run"
        ) from exc
    # GGUF lists dimensions fastest-varying first, the reverse of PyTorch's order.
    values = values.reshape(tuple(int(d) for d in reversed(tensor.shape)))
    # F32 data is a read-only view of the memory map; torch needs memory it may write.
    return np.array(values, dtype=np.float32) if not values.flags.writeable or values.dtype != np.float32 else values
