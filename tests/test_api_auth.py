"""API keys and tenant namespaces."""
from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from preheat.server.auth import Authenticator, namespace_for, presented_key
from preheat.server.errors import AuthenticationError


def test_key_from_either_header():
    assert presented_key(Headers({"x-api-key": "k1"})) == "k1"
    assert presented_key(Headers({"authorization": "Bearer k2"})) == "k2"
    assert presented_key(Headers({"authorization": "Basic abc"})) is None
    assert presented_key(Headers({})) is None


def test_namespaces_differ_per_key_and_do_not_reveal_it():
    assert namespace_for("a") == namespace_for("a")
    assert namespace_for("a") != namespace_for("b")
    assert "secret" not in namespace_for("secret")
    assert namespace_for(None) == namespace_for("")


def test_open_server_accepts_any_key_but_still_isolates():
    auth = Authenticator(())
    assert auth.namespace(Headers({})) == namespace_for(None)
    assert auth.namespace(Headers({"x-api-key": "x"})) == namespace_for("x")


def test_configured_keys_are_required():
    auth = Authenticator(("good", "also-good"))
    assert auth.namespace(Headers({"x-api-key": "also-good"})) == namespace_for("also-good")
    with pytest.raises(AuthenticationError, match="x-api-key header is required"):
        auth.namespace(Headers({}))
    with pytest.raises(AuthenticationError, match="invalid x-api-key") as info:
        auth.namespace(Headers({"x-api-key": "bad"}))
    assert info.value.status == 401 and info.value.error_type == "authentication_error"
