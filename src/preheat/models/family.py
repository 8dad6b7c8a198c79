"""What a model family provides: ``FAMILY`` in each module under ``models/``.

The loader reads a file's metadata and tensors through the protocols here and asks the
family for everything particular to it: its config keys, its tensor names (a GGUF name
maps to the Hugging Face name its network code uses), rows llama.cpp's converter
permuted, and the network itself. Nothing outside the family module knows its name.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from preheat.models.config import ModelConfig
from preheat.models.decoder import DecoderModel
from preheat.models.weights import Weights


class Metadata(Protocol):
    """A GGUF file's key-value metadata and tensor inventory."""

    architecture: str
    tensor_names: frozenset[str]

    def value(self, key: str, default=None):
        """The key's value, or ``default`` when the file has no such key."""

    def require(self, key: str):
        """The key's value; raises UnsupportedModelError naming it when absent."""

    def tensor_values(self, name: str) -> np.ndarray:
        """A small tensor's float32 values (e.g. ``rope_freqs.weight``)."""


class Family(Protocol):
    name: str

    def config_from_gguf(self, meta: Metadata) -> ModelConfig:
        """The config from ``{architecture}.*`` keys and the tensor inventory."""

    def config_from_hf(self, raw: dict) -> ModelConfig:
        """The config from a Hugging Face ``config.json``; raises UnsupportedModelError for
        variants the family's code does not run."""

    def gguf_tensor_name(self, gguf_name: str) -> str | None:
        """The Hugging Face name of a GGUF tensor; None for tensors that are not weights
        (``rope_freqs.weight``); raises UnsupportedModelError for unknown ones."""

    def permuted_heads(self, name: str, cfg: ModelConfig, architecture: str) -> int | None:
        """For a weight whose rows llama.cpp interleaved for its RoPE: the head count to undo it."""

    def weight_names(self, cfg: ModelConfig) -> list[str]:
        """Every tensor the network needs (checked before building)."""

    def build(self, cfg: ModelConfig, weights: Weights, device: torch.device, dtype: torch.dtype,
              weight_format: str) -> DecoderModel:
        """The network, its weights taken from ``weights`` one tensor at a time."""
