"""Token embedding tables: dense, or kept in the packed form of a quantized file.

A tied model's table is also its LM head, the largest matmul of a decode step. Kept packed
(``kernels/quant_matmul.py``'s layout), the head runs on the quantized kernel and a lookup
unpacks only the rows of the step's tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from preheat.kernels.gguf_repack import unpack_rows
from preheat.kernels.quant_matmul import PackedWeight


class DenseEmbedding:
    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.num_embeddings = weight.shape[0]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class PackedEmbedding:
    """Rows of a packed weight, unpacked to float32 on lookup (exactly the file's values)."""

    def __init__(self, weight: PackedWeight, num_embeddings: int):
        self.weight = weight
        self.num_embeddings = num_embeddings
        self.embedding_dim = weight.codes.shape[1] * 32

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return unpack_rows(self.weight, ids, self.embedding_dim)
