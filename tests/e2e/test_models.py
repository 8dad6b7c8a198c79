"""GET /v1/models and /v1/models/{id}, and /health."""
from __future__ import annotations

import anthropic
import pytest
from e2e_helpers import ALIAS, CONTEXT_WINDOW


def test_list_models(client):
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert len(ids) == 2 and ids[1] == ALIAS
    assert page.first_id == ids[0] and page.last_id == ALIAS and page.has_more is False
    assert all(m.type == "model" and m.max_input_tokens == CONTEXT_WINDOW for m in page.data)


def test_get_served_model_alias_and_claude_name(client):
    served = client.models.list().data[0].id
    assert client.models.retrieve(served).display_name == served
    assert client.models.retrieve(ALIAS).id == ALIAS
    info = client.models.retrieve("claude-3-5-haiku-latest")
    assert info.id == "claude-3-5-haiku-latest" and served in info.display_name


def test_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.body["error"]["type"] == "not_found_error"


def test_health(server):
    health = server.health()
    assert health["status"] == "ok" and health["total_blocks"] > 0
