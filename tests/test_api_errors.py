"""Error bodies, engine errors -> HTTP statuses, and no traceback ever reaching a client."""
from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from preheat.engine.errors import (EngineError, EngineOverloadedError, EngineStoppedError,
                                   PromptTooLongError, RequestTooLargeError)
from preheat.server.errors import InvalidRequestError, from_engine_error
from preheat.server.middleware import RequestIdMiddleware


def test_error_body_shape():
    body = InvalidRequestError("messages: bad").body("req_1")
    assert body == {"type": "error", "error": {"type": "invalid_request_error", "message": "messages: bad"},
                    "request_id": "req_1"}


def test_engine_errors_map_to_anthropic_statuses():
    too_long = from_engine_error(PromptTooLongError(9000, 8192))
    assert (too_long.status, too_long.error_type) == (400, "invalid_request_error")
    assert "9000" in too_long.message and "8192" in too_long.message
    assert from_engine_error(RequestTooLargeError("needs 9000 tokens")).status == 413
    overloaded = from_engine_error(EngineOverloadedError("busy"))
    assert (overloaded.status, overloaded.error_type) == (529, "overloaded_error")
    assert overloaded.headers["retry-after"]
    assert from_engine_error(EngineStoppedError("stopped")).status == 500
    assert from_engine_error(EngineError("boom")).error_type == "api_error"


def _app() -> Starlette:
    async def ok(request):
        return PlainTextResponse(request.state.request_id)

    async def crash(request):
        raise RuntimeError("secret internals")

    app = Starlette(routes=[Route("/ok", ok), Route("/crash", crash)])
    app.add_middleware(RequestIdMiddleware)
    return app


def test_every_response_has_a_request_id():
    with TestClient(_app()) as client:
        response = client.get("/ok")
    assert response.headers["request-id"].startswith("req_")
    assert response.text == response.headers["request-id"]


def test_an_unhandled_exception_is_a_500_without_the_traceback(caplog):
    with TestClient(_app(), raise_server_exceptions=False) as client:
        response = client.get("/crash")
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == {"type": "api_error", "message": "Internal server error"}
    assert body["request_id"] == response.headers["request-id"]
    assert "secret internals" not in response.text
    assert "secret internals" in caplog.text  # logged for the operator
