"""Model ids: the loaded model, aliases, claude-* names, and /v1/models pages."""
from __future__ import annotations

import pytest

from preheat.server.errors import NotFoundError
from preheat.server.model_registry import ModelRegistry


def test_served_id_aliases_and_claude_names_resolve_to_the_model():
    registry = ModelRegistry("smol", 8192, aliases=("gpt-4o",))
    assert registry.resolve("smol") == "smol"
    assert registry.resolve("gpt-4o") == "smol"
    assert registry.resolve("claude-3-5-sonnet-latest") == "smol"


def test_unknown_ids_are_not_found():
    registry = ModelRegistry("smol", 8192, claude_aliases=False)
    for name in ("gpt-4o", "claude-3-haiku"):
        with pytest.raises(NotFoundError) as info:
            registry.resolve(name)
        assert info.value.status == 404 and info.value.error_type == "not_found_error"


def test_model_info_echoes_the_requested_id():
    info = ModelRegistry("smol", 8192).info("claude-opus-4")
    assert info.id == "claude-opus-4" and info.type == "model"
    assert info.display_name == "claude-opus-4 (served by smol)"
    assert info.max_input_tokens == 8192 and info.created_at.endswith("Z")


def test_pages():
    registry = ModelRegistry("a", 100, aliases=("b", "c"))
    first = registry.page(limit=2, after_id=None, before_id=None)
    assert [m.id for m in first.data] == ["a", "b"] and first.has_more
    assert (first.first_id, first.last_id) == ("a", "b")
    rest = registry.page(limit=2, after_id="b", before_id=None)
    assert [m.id for m in rest.data] == ["c"] and not rest.has_more
    before = registry.page(limit=1, after_id=None, before_id="c")
    assert [m.id for m in before.data] == ["b"] and before.has_more
