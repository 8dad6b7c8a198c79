"""Strings a JSON body can spell but text cannot hold: lone UTF-16 surrogates.

JSON allows ``"\\ud800"`` (half of a surrogate pair, alone); Python decodes it into a
string that no UTF-8 encoder or tokenizer takes. Both APIs refuse such a body up front
with a 400 naming the field, instead of failing deep inside with a 500.
"""
from __future__ import annotations

import json
import re
from typing import Any

# A \\uD800-\\uDFFF escape: only bodies that spell one need the full check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def lone_surrogate_path(raw: bytes) -> str | None:
    """The dotted path of the first string (or key) in ``raw`` holding a lone surrogate;
    None when there is none, or when ``raw`` is not JSON (the validator says why)."""
    if not _SURROGATE_ESCAPE.search(raw):
        return None
    try:
        return lone_surrogate_in(json.loads(raw))
    except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
        return None


def lone_surrogate_in(value: Any) -> str | None:
    """``lone_surrogate_path`` of a value already parsed."""
    return _find(value, [])


def _find(value: Any, path: list[str]) -> str | None:
    if isinstance(value, str):
        return None if _encodes(value) else ".".join(path) or "body"
    if isinstance(value, dict):
        for key, item in value.items():
            if not _encodes(key):
                return ".".join(path) or "body"
            if (found := _find(item, [*path, key])) is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _find(item, [*path, str(i)])) is not None:
                return found
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def lone_surrogate_message(path: str) -> str:
    return (f"{path}: the string holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape "
            "without its pair), which is not valid Unicode text")
