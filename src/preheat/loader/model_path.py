"""Where a model named on the command line lives: the embedded GGUF, a ``.gguf`` file or a
Hugging Face folder. Torch-free: the API process resolves the model to load its tokenizer."""
from __future__ import annotations

from pathlib import Path

from preheat.loader.embedded import embedded_model_path
from preheat.loader.errors import ModelNotFoundError


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf" and path.is_file()


def model_path(model: str | Path | None) -> Path:
    """The model's file or folder (None: the embedded model); raises ModelNotFoundError."""
    path = embedded_model_path() if model is None else Path(model).expanduser()
    if is_gguf(path) or path.is_dir():
        return path
    raise ModelNotFoundError(
        f"model {str(model)!r} not found: expected an existing .gguf file or a Hugging Face model folder "
        "(with config.json, *.safetensors and tokenizer.json); omit it to use the embedded model"
    )
