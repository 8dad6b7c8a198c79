"""Anthropic's error shapes: ``{"type": "error", "error": {type, message}, "request_id"}``."""
from __future__ import annotations

from preheat.engine import (EngineError, EngineOverloadedError, EngineStoppedError,
                            PromptTooLongError, RequestTooLargeError)

# Seconds a client should wait before retrying an overloaded server.
RETRY_AFTER_SECONDS = 1


class APIError(Exception):
    """An error a client is told about: HTTP status, Anthropic error type, message."""

    status: int = 500
    error_type: str = "api_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None,
                 details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.details = details  # ``error.details``: what the SDK acts on (e.g. error_code)

    def body(self, request_id: str) -> dict:
        body = error_body(self.error_type, self.message, request_id)
        if self.details is not None:
            body["error"]["details"] = self.details
        return body


class InvalidRequestError(APIError):
    status, error_type = 400, "invalid_request_error"


class AuthenticationError(APIError):
    status, error_type = 401, "authentication_error"


class NotFoundError(APIError):
    status, error_type = 404, "not_found_error"


class MethodNotAllowedError(APIError):
    status, error_type = 405, "invalid_request_error"


class RequestTooLarge(APIError):
    status, error_type = 413, "request_too_large"


class InternalError(APIError):
    status, error_type = 500, "api_error"


class OverloadedError(APIError):
    status, error_type = 529, "overloaded_error"

    def __init__(self, message: str):
        super().__init__(message, headers={"retry-after": str(RETRY_AFTER_SECONDS)})


def error_body(error_type: str, message: str, request_id: str) -> dict:
    return {"type": "error", "error": {"type": error_type, "message": message},
            "request_id": request_id}


def from_engine_error(err: EngineError) -> APIError:
    """The client-facing error for an engine refusal or failure."""
    if isinstance(err, PromptTooLongError):
        return InvalidRequestError(str(err))
    if isinstance(err, RequestTooLargeError):
        return RequestTooLarge(str(err))
    if isinstance(err, EngineOverloadedError):
        return OverloadedError(str(err) or "the server is overloaded; retry later")
    if isinstance(err, EngineStoppedError):
        return InternalError(str(err) or "the engine has stopped")
    return InternalError(str(err) or "internal error in the engine")
