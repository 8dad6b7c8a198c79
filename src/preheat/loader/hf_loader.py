"""A Hugging Face model folder (`config.json` + `*.safetensors`): its family, config and
weights, each tensor read from the memory-mapped shards when the model asks for it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from preheat.loader.errors import ModelNotFoundError, UnsupportedModelError
from preheat.models import registry
from preheat.models.config import ModelConfig
from preheat.models.family import Family
from preheat.models.weights import QuantizedTensor

_INDEX_FILE = "model.safetensors.index.json"


def hf_family(raw: dict) -> Family:
    try:
        return registry.load(registry.for_hf(raw))
    except registry.UnknownArchitecture as exc:
        raise UnsupportedModelError(str(exc)) from None


def read_config(folder: Path) -> dict:
    return _read_json(Path(folder) / "config.json")


def hf_config(folder: Path) -> ModelConfig:
    """The config, as the folder's family reads `config.json`."""
    raw = read_config(folder)
    return hf_family(raw).config_from_hf(raw)


class SafetensorsWeights(Mapping):
    """``models/weights.py``'s ``Weights`` over a folder's shards, limited to ``names``;
    also a read-only mapping of those names to tensors in ``dtype``."""

    def __init__(self, folder: Path, names: list[str], dtype: torch.dtype):
        self.dtype = dtype
        wanted = set(names)
        self.files: dict[str, Path] = {}
        for file in safetensors_files(folder):
            with safe_open(file, framework="pt", device="cpu") as shard:
                self.files.update((name, file) for name in shard.keys() if name in wanted)
        missing = wanted - self.files.keys()
        if missing:
            raise UnsupportedModelError(f"{folder} is missing tensors: {', '.join(sorted(missing)[:5])}")

    def __getitem__(self, name: str) -> torch.Tensor:
        with safe_open(self.files[name], framework="pt", device="cpu") as shard:
            # A copy in torch's own memory: the map's tensors sit at the file's offsets, and
            # kernels may round differently on misaligned data (same weights, same logits).
            return shard.get_tensor(name).to(self.dtype, copy=True).contiguous()

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def dense(self, name: str) -> torch.Tensor:
        return self[name]

    def quantized(self, name: str) -> QuantizedTensor | None:
        return None

    def release(self, name: str) -> None:
        pass  # each read is a copy out of a map closed at once


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


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UnsupportedModelError(f"{path} is not valid JSON ({exc})") from None
