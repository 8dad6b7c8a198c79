"""Load a model (config, weights, tokenizer) from a GGUF file, a Hugging Face folder or the embedded one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from preheat.loader.errors import UnsupportedModelError
from preheat.loader.gguf_loader import gguf_config, gguf_matmul_type, gguf_weight_count, gguf_weights, read_gguf
from preheat.loader.hf_loader import expected_weight_names, hf_config, hf_weights
from preheat.loader.model_path import is_gguf, model_path
from preheat.loader.weight_cache import load_or_convert
from preheat.models.config import ModelConfig
from preheat.tokenizer.tokenizer import Tokenizer


@dataclass
class LoadedModel:
    """Everything the engine needs to serve a model. Weights are on CPU, HF-named."""

    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    model_id: str
    source: Path
    weight_type: str | None = None  # GGML type of a GGUF's decoder matmuls ("Q4_1"); None: HF folder


def load_model(
    model: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Load a model.

    Args:
        model: None for the embedded SmolLM2 GGUF, a path to a `.gguf` file, or a Hugging Face
            model folder (config.json + safetensors + tokenizer.json).
        dtype: dtype of the returned weights.
        cache_dir: where converted GGUF weights are cached (default: `$PREHEAT_CACHE_DIR`, then
            the user cache dir).

    Raises:
        ModelNotFoundError: `model` names no existing GGUF file or model folder.
        UnsupportedModelError: the model's architecture, tensor types or tokenizer are not supported.
    """
    path = model_path(model)
    return _load_gguf(path, dtype, cache_dir) if is_gguf(path) else _load_hf_folder(path, dtype)


def _load_gguf(path: Path, dtype: torch.dtype, cache_dir: Path | None) -> LoadedModel:
    reader = read_gguf(path)
    config = gguf_config(reader)
    cached = load_or_convert(
        path,
        dtype,
        lambda: gguf_weights(reader, config, dtype),
        total=gguf_weight_count(reader),
        cache_dir=cache_dir,
    )
    # A cache file from a converter bug or a truncated GGUF must not reach the engine half-filled.
    missing = set(expected_weight_names(config)) - cached.weights.keys()
    if missing:
        raise UnsupportedModelError(f"{path} lacks tensors: {', '.join(sorted(missing)[:5])}")
    return LoadedModel(config, cached.weights, Tokenizer.from_gguf(reader), path.stem.lower(), path.resolve(),
                       gguf_matmul_type(reader))


def _load_hf_folder(path: Path, dtype: torch.dtype) -> LoadedModel:
    config = hf_config(path)
    weights = hf_weights(path, config, dtype)
    return LoadedModel(config, weights, Tokenizer.from_hf_folder(path), path.resolve().name, path.resolve())
