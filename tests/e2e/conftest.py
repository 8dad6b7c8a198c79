"""End-to-end fixtures: ``preheat serve`` as a real process, the official SDK as the client.

Servers use the embedded model. The main one is shared by the whole session, so
every test writes prompts of its own (``document()`` starts with a fresh nonce)
and never sees another test's cache entries.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from e2e_helpers import KEY_A, KEY_B, MAIN_SERVER_ARGS, Server, start_server

E2E_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if E2E_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def server(server_logs) -> Iterator[Server]:
    srv = start_server(server_logs, "main", MAIN_SERVER_ARGS)
    yield srv
    srv.stop()


@pytest.fixture
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=KEY_A, max_retries=0, timeout=120)


@pytest.fixture
def client_b(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=KEY_B, max_retries=0, timeout=120)


@pytest.fixture
def async_client(server) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=server.base_url, api_key=KEY_A, max_retries=0, timeout=120)


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"x-api-key": KEY_A}, timeout=120) as c:
        yield c
