"""Where a family's tensors come from, and how each becomes a layer's weight.

A family asks for tensors by their Hugging Face names; a ``Weights`` source answers from
a GGUF file, a safetensors folder or a dict, one tensor at a time. ``WeightBuilder`` turns
them into the engine's layout as the weight format says:

- ``auto``: a quantized tensor is repacked, block for block, into preheat's quantized matmul kernel
  layout (``kernels/gguf_repack.py``): every weight keeps the value the file gives it, and
  nothing is ever expanded to floats. Float tensors (and everything, where that kernel
  cannot run) are dense in the model's dtype.
- ``dense``: every tensor dequantized to the model's dtype: the exact reference path.
- ``int4``: lossy. Every decoder matmul re-quantized to 4-bit groups, the LM head to 8-bit.

Only one tensor's float copy exists at a time while a model is built.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from gguf import GGMLQuantizationType

from preheat.kernels.gguf_repack import repack, supported_types
from preheat.kernels.quant_matmul import TILE, PackedWeight, load_quant_kernel
from preheat.layers.embedding import DenseEmbedding, PackedEmbedding
from preheat.layers.linear import ConcatLinear, QuantLinear, make_head, make_linear
from preheat.layers.norm import RMSNorm, multiplier

WEIGHT_FORMATS = ("auto", "dense", "int4")


@dataclass(frozen=True)
class QuantizedTensor:
    """A matrix as a GGUF file stores it: each row a run of quantization blocks."""

    blocks: np.ndarray  # [rows, row_bytes] uint8 (a view of the memory-mapped file)
    ggml_type: GGMLQuantizationType
    shape: tuple[int, int]  # [out, in]


class Weights(Protocol):
    """Tensors by Hugging Face name, produced on demand."""

    def __contains__(self, name: str) -> bool: ...

    def dense(self, name: str) -> torch.Tensor:
        """The tensor's values as float (dequantized if the file quantizes it)."""

    def quantized(self, name: str) -> QuantizedTensor | None:
        """The tensor's blocks if the file quantizes it, else None."""

    def release(self, name: str) -> None:
        """The model holds its own copy of the tensor now (a memory map may drop its pages)."""


class StateDict:
    """``Weights`` over tensors already in memory (tests, small float checkpoints)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def dense(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def quantized(self, name: str) -> QuantizedTensor | None:
        return None

    def release(self, name: str) -> None:
        pass


def as_weights(weights: Weights | dict[str, torch.Tensor]) -> Weights:
    return StateDict(weights) if isinstance(weights, dict) else weights


class WeightBuilder:
    """Builds norms, linears and embeddings from ``weights`` in ``weight_format``."""

    def __init__(self, weights: Weights | dict[str, torch.Tensor], weight_format: str,
                 device: torch.device, dtype: torch.dtype):
        if weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight format must be one of {', '.join(WEIGHT_FORMATS)}, not {weight_format!r}")
        if weight_format == "int4" and device.type != "cpu":
            raise ValueError("the int4 weight format runs on CPU kernels only: use it with device cpu")
        self.weights = as_weights(weights)
        self.format = weight_format
        self.device, self.dtype = device, dtype
        self.repacks = weight_format == "auto" and device.type == "cpu" and load_quant_kernel()
        self.packed_any = False  # whether some matmul kept the file's quantized weights

    def __contains__(self, name: str) -> bool:
        return name in self.weights

    @property
    def built_format(self) -> str:
        """What the built model reports: "native" once a matmul kept the file's quantized
        weights, else the format asked for ("dense" for an ``auto`` that found none)."""
        return "native" if self.packed_any else "dense" if self.format == "auto" else self.format

    def tensor(self, name: str) -> torch.Tensor:
        """A small float tensor (a bias, a norm) in the model's dtype."""
        return self._dense(name, offset=0.0)

    def norm(self, name: str, eps: float, offset: float = 0.0) -> RMSNorm:
        """An RMSNorm whose weight is stored as ``multiplier - offset``."""
        return RMSNorm(self._dense(name, offset), eps)

    def linear(self, names: Iterable[str], biases: Iterable[str] | None = None):
        """One matmul whose outputs are the named weights' outputs, in order."""
        names = list(names)
        bias = torch.cat([self.tensor(b) for b in biases]) if biases else None
        packed = self._packed(names) if self.repacks else None
        if packed is not None:
            self.packed_any = True
            if len(packed) == 1:
                return QuantLinear.from_packed(*packed[0], bias)
            return ConcatLinear([QuantLinear.from_packed(*p, None) for p in packed], bias)
        weight = torch.cat([self._dense_matrix(n) for n in names])
        return make_linear(weight, bias, int4=self.format == "int4")

    def embedding(self, name: str):
        """The token embedding table: kept packed where its matmul (a tied head) is."""
        if self.repacks:
            packed = self._packed([name])
            if packed is not None and len(packed) == 1:
                return PackedEmbedding(*packed[0])
        return DenseEmbedding(self._dense_matrix(name))

    def head(self, name: str | None, embedding):
        """The LM head: ``name``'s matrix, or the embedding's when the model ties them."""
        if name is None and isinstance(embedding, PackedEmbedding):
            return QuantLinear.from_packed(embedding.weight, embedding.num_embeddings, None)
        if name is not None and self.repacks:
            packed = self._packed([name])
            if packed is not None and len(packed) == 1:
                return QuantLinear.from_packed(*packed[0], None)
        weight = embedding.weight if name is None else self._dense_matrix(name)
        return make_head(weight, quantized=self.format == "int4")

    def _dense_matrix(self, name: str) -> torch.Tensor:
        return self._dense(name, offset=0.0)

    def _dense(self, name: str, offset: float) -> torch.Tensor:
        values = multiplier(self.weights.dense(name), offset).to(device=self.device, dtype=self.dtype)
        self.weights.release(name)
        return values.contiguous()

    def _packed(self, names: list[str]) -> list[tuple[PackedWeight, int]] | None:
        """The weights repacked, runs of one type concatenated first (their rows are
        independent blocks); None when any is not quantized in a type the kernel runs."""
        tensors = [self.weights.quantized(n) for n in names]
        if any(t is None or t.ggml_type not in supported_types() for t in tensors):
            return None
        runs: list[list[QuantizedTensor]] = []
        for t in tensors:
            if runs and runs[-1][0].ggml_type == t.ggml_type:
                runs[-1].append(t)
            else:
                runs.append([t])
        out = []
        for run in runs:
            blocks = run[0].blocks if len(run) == 1 else np.concatenate([t.blocks for t in run])
            rows = sum(t.shape[0] for t in run)
            out.append((repack(blocks, run[0].ggml_type, run[0].shape[1]), rows))
        for name in names:
            self.weights.release(name)
        return _joined(out)


def _joined(parts: list[tuple[PackedWeight, int]]) -> list[tuple[PackedWeight, int]]:
    """Adjacent parts in one packed format (Q5_0 and Q8_0 both become 8-bit codes with float16
    scales) as one matrix, where the first fills whole tiles of rows: one kernel call, not two."""
    out = [parts[0]]
    for weight, rows in parts[1:]:
        prev, prev_rows = out[-1]
        if prev_rows % TILE == 0 and all(a.shape[1:] == b.shape[1:] and a.dtype == b.dtype for a, b in
                                         zip((prev.codes, prev.scale, prev.min), (weight.codes, weight.scale, weight.min))):
            out[-1] = (PackedWeight(*(torch.cat([a, b]) for a, b in zip(
                (prev.codes, prev.scale, prev.min), (weight.codes, weight.scale, weight.min)))), prev_rows + rows)
        else:
            out.append((weight, rows))
    return out
