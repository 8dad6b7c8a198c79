"""Where preheat keeps what outlives a process: file hashes, built tokenizers, the KV disk
tier, the thinking-signature key, the stores. Torch-free, so the API process can name it too."""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_DIR_ENV = "PREHEAT_CACHE_DIR"


def resolve_cache_dir(cache_dir: Path | None = None) -> Path:
    """The cache root: explicit argument, else `$PREHEAT_CACHE_DIR`, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    return Path(platformdirs.user_cache_dir("preheat"))
