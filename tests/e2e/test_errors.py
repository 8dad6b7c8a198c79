"""Every error is Anthropic's body with Anthropic's status, and a request id."""
from __future__ import annotations

import anthropic
import httpx
import pytest
from e2e_helpers import ALIAS, CONTEXT_WINDOW, KEY_A, MAX_REQUEST_BYTES, start_server

HI = [{"role": "user", "content": "hi"}]


def error_of(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert body["request_id"] == response.headers["request-id"]
    assert "Traceback" not in response.text
    return body["error"]["message"]


@pytest.mark.parametrize("body, expected", [
    (b'{"model": "x", ', "malformed JSON body"),
    ({"max_tokens": 5, "messages": HI}, "model: Field required"),
    ({"model": ALIAS, "messages": HI}, "max_tokens: Field required"),
    ({"model": ALIAS, "max_tokens": 5, "messages": []}, "messages: List should have at least 1 item"),
    ({"model": ALIAS, "max_tokens": 5, "messages": [{"role": "tool", "content": "hi"}]}, "messages.0.role"),
    ({"model": ALIAS, "max_tokens": 5, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"model": ALIAS, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]},
     "messages.0.content.0: image blocks are not supported: the served model reads text only"),
])
def test_invalid_requests(http, body, expected):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    message = error_of(http.post("/v1/messages", **kwargs), 400, "invalid_request_error")
    assert message.startswith(expected)


def test_prompt_longer_than_the_context_window_names_both_numbers(client):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=ALIAS, max_tokens=5,
                               messages=[{"role": "user", "content": "word " * (CONTEXT_WINDOW + 100)}])
    message = info.value.body["error"]["message"]
    assert "prompt is too long" in message and str(CONTEXT_WINDOW) in message


def test_authentication(server):
    missing = httpx.post(f"{server.base_url}/v1/messages",
                         json={"model": ALIAS, "max_tokens": 1, "messages": HI})
    assert error_of(missing, 401, "authentication_error") == "x-api-key header is required"
    wrong = anthropic.Anthropic(base_url=server.base_url, api_key="not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model=ALIAS, max_tokens=1, messages=HI)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.models.list()
    bearer = anthropic.Anthropic(base_url=server.base_url, auth_token=KEY_A, max_retries=0)
    assert bearer.messages.count_tokens(model=ALIAS, messages=HI).input_tokens > 0
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # probes need no key


def test_not_found(http):
    message = error_of(http.post("/v1/messages", json={"model": "gpt-4o", "max_tokens": 1, "messages": HI}),
                       404, "not_found_error")
    assert "gpt-4o" in message
    error_of(http.get("/v1/nothing-here"), 404, "not_found_error")


def test_request_too_large(http):
    huge = "x" * (MAX_REQUEST_BYTES + 1)
    response = http.post("/v1/messages", json={"model": ALIAS, "max_tokens": 1,
                                               "messages": [{"role": "user", "content": huge}]})
    error_of(response, 413, "request_too_large")


@pytest.fixture(scope="module")
def overloaded_server(server_logs):
    srv = start_server(server_logs, "overloaded", ["--max-waiting", "0", "--kv-cache-tokens", "1024"])
    yield srv
    srv.stop()


def test_overloaded(overloaded_server):
    client = anthropic.Anthropic(base_url=overloaded_server.base_url, api_key="any", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude-e2e-model", max_tokens=1, messages=HI)
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"
    assert info.value.response.headers["retry-after"]
    # count_tokens needs no engine capacity
    assert client.messages.count_tokens(model="claude-e2e-model", messages=HI).input_tokens > 0
