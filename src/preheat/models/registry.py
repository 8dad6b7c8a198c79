"""Which family module under ``models/`` runs a model, by its GGUF architecture or its
Hugging Face config. Torch-free: the API process asks it for a family's turn format.

Adding a family: a module ``models/<name>.py`` whose ``FAMILY`` implements
``models/family.py``'s ``Family``, one entry here, and its tests.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from preheat.models.family import Family


class UnknownArchitecture(LookupError):
    """No family runs this architecture."""


@dataclass(frozen=True)
class FamilyInfo:
    module: str  # preheat.models.<module> holds FAMILY
    gguf_architectures: tuple[str, ...]  # `general.architecture`
    hf_model_types: tuple[str, ...]  # config.json's `model_type`
    hf_architectures: tuple[str, ...]  # config.json's `architectures`
    turn_format: str  # tokenizer/turn_formats.py: the chat format when a model ships no template


FAMILIES: tuple[FamilyInfo, ...] = (
    FamilyInfo("llama", ("llama", "mistral", "qwen2"), ("llama", "mistral", "qwen2"),
               ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"), "chatml"),
    FamilyInfo("qwen3", ("qwen3",), ("qwen3",), ("Qwen3ForCausalLM",), "chatml"),
    FamilyInfo("gemma3", ("gemma3",), ("gemma3_text",), ("Gemma3ForCausalLM",), "gemma"),
)


def supported_gguf() -> str:
    return ", ".join(a for f in FAMILIES for a in f.gguf_architectures)


def supported_hf() -> str:
    return ", ".join(t for f in FAMILIES for t in f.hf_model_types)


def for_gguf(architecture: str) -> FamilyInfo:
    for info in FAMILIES:
        if architecture in info.gguf_architectures:
            return info
    raise UnknownArchitecture(
        f"GGUF architecture {architecture!r} is not supported (supported: {supported_gguf()})")


def for_hf(config: dict) -> FamilyInfo:
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    for info in FAMILIES:
        if model_type in info.hf_model_types or any(a in info.hf_architectures for a in architectures):
            return info
    named = f"model_type {model_type!r}" + (f" ({', '.join(architectures)})" if architectures else "")
    raise UnknownArchitecture(f"{named} is not supported (supported: {supported_hf()})")


def load(info: FamilyInfo) -> Family:
    """The family's implementation (imports torch)."""
    return importlib.import_module(f"preheat.models.{info.module}").FAMILY


def by_name(name: str) -> FamilyInfo:
    for info in FAMILIES:
        if info.module == name:
            return info
    raise UnknownArchitecture(f"no model family {name!r}")
