"""Whether preheat can run a model, told in one line before anything heavy starts.

Torch-free (the API process calls it): it reads a GGUF file's header and tensor inventory,
or a folder's ``config.json``, and checks them against the registered families and the
tensor types preheat runs. What only building the network can find (a tensor the family
needs but the file lacks) is reported by the loader in the same way.
"""
from __future__ import annotations

import json
from pathlib import Path

from gguf import GGMLQuantizationType as Q

from preheat.loader.errors import ModelNotFoundError, UnsupportedModelError
from preheat.loader.gguf_file import GGUFFile, GGUFFormatError
from preheat.loader.model_path import is_gguf, model_path
from preheat.models import registry

# Repacked block for block onto the quantized matmul kernel (kernels/gguf_repack.py), or float.
QUANTIZED_TYPES = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS)
FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)
RUNNABLE_TYPES = frozenset(QUANTIZED_TYPES + FLOAT_TYPES)


def check_model(model: str | Path | None) -> Path:
    """The model's path; raises ModelNotFoundError or UnsupportedModelError with one line that
    names the file, what it is, and what preheat runs."""
    path = model_path(model)
    if is_gguf(path):
        check_gguf(path)
    else:
        check_folder(path)
    return path


def check_gguf(path: Path) -> None:
    try:
        reader = GGUFFile(path)
    except GGUFFormatError as exc:
        raise UnsupportedModelError(str(exc)) from None
    arch = reader.value("general.architecture")
    try:
        registry.for_gguf(arch or "")
    except registry.UnknownArchitecture:
        raise UnsupportedModelError(f"{path.name}: GGUF architecture {arch!r} is not supported; preheat "
                                    f"runs {registry.supported_gguf()}") from None
    for tensor in reader.tensors:
        if tensor.tensor_type not in RUNNABLE_TYPES:
            raise UnsupportedModelError(
                f"{path.name}: tensor {tensor.name} is {tensor.tensor_type.name}, a type preheat does not "
                f"run; it runs {', '.join(t.name for t in FLOAT_TYPES + QUANTIZED_TYPES)}")
        if tensor.data.nbytes != int(tensor.n_bytes):
            raise UnsupportedModelError(f"{path.name}: the file is truncated (tensor {tensor.name} has "
                                        f"{tensor.data.nbytes} of its {int(tensor.n_bytes)} bytes)")


def check_folder(path: Path) -> None:
    config = path / "config.json"
    if not config.is_file():
        raise ModelNotFoundError(f"{path}: a model folder needs config.json, *.safetensors and tokenizer.json; "
                                 "config.json is missing")
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UnsupportedModelError(f"{config}: not valid JSON ({exc})") from None
    try:
        registry.for_hf(raw)
    except registry.UnknownArchitecture as exc:
        raise UnsupportedModelError(f"{path.name}: {exc}") from None
    if not any(path.glob("*.safetensors")):
        raise ModelNotFoundError(f"{path.name}: the folder has no *.safetensors weights")
    if not (path / "tokenizer.json").is_file():
        raise ModelNotFoundError(f"{path.name}: the folder has no tokenizer.json")
