"""Hugging Face model folder (`config.json` + `*.safetensors`) -> `ModelConfig` and state dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from preheat.loader.errors import ModelNotFoundError, UnsupportedModelError
from preheat.models.config import ModelConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_INDEX_FILE = "model.safetensors.index.json"


def hf_config(folder: Path) -> ModelConfig:
    """Read `config.json`; accepts both `rope_theta`/`rope_scaling` and transformers 5's `rope_parameters`."""
    raw = _read_json(Path(folder) / "config.json")
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    # ModelConfig.attention_bias means q/k/v biases only (Qwen2's layout).
    if raw.get("mlp_bias") or (model_type != "qwen2" and raw.get("attention_bias")):
        raise UnsupportedModelError("biases on o_proj or the MLP are not supported")
    hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    rope = dict(raw.get("rope_parameters") or {})
    return ModelConfig(
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
        rope_scaling=_rope_scaling(raw.get("rope_scaling") or rope),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases and its config does not say so.
        attention_bias=model_type == "qwen2",
    )


def hf_weights(folder: Path, config: ModelConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Load the safetensors shards, keeping exactly the tensors `expected_weight_names` lists."""
    wanted = set(expected_weight_names(config))
    weights: dict[str, torch.Tensor] = {}
    for file in safetensors_files(folder):
        with safe_open(file, framework="pt", device="cpu") as shard:
            for name in shard.keys():
                if name in wanted:
                    weights[name] = shard.get_tensor(name).to(dtype).contiguous()
    missing = wanted - weights.keys()
    if missing:
        raise UnsupportedModelError(f"{folder} is missing tensors: {', '.join(sorted(missing)[:5])}")
    return weights


def safetensors_files(folder: Path) -> list[Path]:
    """The checkpoint's shard files, from the index when the checkpoint is sharded."""
    folder = Path(folder)
    index = folder / _INDEX_FILE
    if index.exists():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        return [folder / shard for shard in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"no *.safetensors weights in {folder}")
    return files


def expected_weight_names(config: ModelConfig) -> list[str]:
    """Every tensor name a loaded state dict must contain (HF Llama naming)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not config.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(config.num_layers):
        layer = f"model.layers.{i}"
        names += [f"{layer}.input_layernorm.weight", f"{layer}.post_attention_layernorm.weight"]
        names += [f"{layer}.self_attn.{p}_proj.weight" for p in "qkvo"]
        names += [f"{layer}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
        if config.attention_bias:
            names += [f"{layer}.self_attn.{p}_proj.bias" for p in "qkv"]
    return names


def _rope_scaling(raw: dict[str, Any]) -> dict | None:
    """Normalize HF rope scaling (old `type` key, or `rope_parameters`) to a dict without `rope_theta`."""
    scaling = {k: v for k, v in raw.items() if k != "rope_theta"}
    if "type" in scaling:
        scaling["rope_type"] = scaling.pop("type")
    if scaling.get("rope_type", "default") == "default":
        return None
    return scaling


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist")
    return json.loads(path.read_text(encoding="utf-8"))
