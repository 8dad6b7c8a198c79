"""Errors raised while locating and loading a model."""

from __future__ import annotations


class ModelNotFoundError(FileNotFoundError):
    """The requested model (file, folder or the embedded default) does not exist."""


class UnsupportedModelError(NotImplementedError):
    """The model exists but uses an architecture, tensor type or tokenizer preheat cannot load."""
