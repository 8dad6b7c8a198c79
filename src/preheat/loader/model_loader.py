"""Load a model (family, config, weights, tokenizer) from a GGUF file, a Hugging Face folder
or the embedded one. Weights stay where they are (the memory-mapped file) until the
family's network takes them, one tensor at a time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from preheat.loader.errors import UnsupportedModelError
from preheat.loader.gguf_loader import GGUFMetadata, GGUFWeights, gguf_family, gguf_matmul_type, read_gguf
from preheat.loader.hf_loader import SafetensorsWeights, hf_family, read_config
from preheat.loader.model_path import is_gguf, model_path
from preheat.models.config import ModelConfig
from preheat.models.family import Family
from preheat.models.weights import Weights
from preheat.tokenizer.tokenizer import Tokenizer
from preheat.tokenizer.turn_formats import read_template_file


@dataclass
class LoadedModel:
    """Everything the engine needs to build and serve a model."""

    config: ModelConfig
    weights: Weights  # HF-named, read on demand
    tokenizer: Tokenizer
    model_id: str
    source: Path
    family: Family
    weight_type: str | None = None  # GGML type of a GGUF's decoder matmuls ("Q4_1"); None: HF folder

    def build(self, device: torch.device, dtype: torch.dtype, weight_format: str):
        """The family's network (``models/decoder.py``'s DecoderModel)."""
        return self.family.build(self.config, self.weights, device, dtype, weight_format)


def load_model(
    model: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: Path | None = None,
    chat_template: str | Path | None = None,
) -> LoadedModel:
    """Load a model.

    Args:
        model: None for the embedded SmolLM2 GGUF, a path to a `.gguf` file, or a Hugging Face
            model folder (config.json + safetensors + tokenizer.json).
        dtype: dtype a Hugging Face folder's tensors are read in.
        cache_dir: unused (weights are read from the model's own files); kept for callers.
        chat_template: a Jinja file used instead of the model's chat template.

    Raises:
        ModelNotFoundError: `model` names no existing GGUF file or model folder.
        UnsupportedModelError: the model's architecture, tensor types or tokenizer are not supported.
    """
    path = model_path(model)
    template = read_template_file(chat_template) if chat_template else None
    try:
        return _load_gguf(path, template) if is_gguf(path) else _load_hf_folder(path, dtype, template)
    except UnsupportedModelError as exc:
        if str(exc).startswith(path.name):
            raise
        raise UnsupportedModelError(f"{path.name}: {exc}") from None


def _load_gguf(path: Path, chat_template: str | None) -> LoadedModel:
    reader = read_gguf(path)
    family = gguf_family(reader)
    config = family.config_from_gguf(GGUFMetadata(reader))
    weights = GGUFWeights(reader, config, family)
    _check_complete(path, family, config, weights)
    return LoadedModel(config, weights, Tokenizer.from_gguf(reader, chat_template), path.stem.lower(), path.resolve(),
                       family, gguf_matmul_type(reader))


def _load_hf_folder(path: Path, dtype: torch.dtype, chat_template: str | None) -> LoadedModel:
    raw = read_config(path)
    family = hf_family(raw)
    config = family.config_from_hf(raw)
    weights = SafetensorsWeights(path, family.weight_names(config), dtype)
    return LoadedModel(config, weights, Tokenizer.from_hf_folder(path, chat_template), path.resolve().name,
                       path.resolve(),
                       family)


def _check_complete(path: Path, family: Family, config: ModelConfig, weights: Weights) -> None:
    # A truncated or mislabelled file must not reach the engine half-filled.
    missing = [n for n in family.weight_names(config) if n not in weights]
    if missing:
        raise UnsupportedModelError(f"{path.name} lacks tensors: {', '.join(missing[:5])}")
