"""OpenAI's error shape, for the OpenAI-compatible paths: ``{"error": {message, type, param,
code}}``.

The server raises the same ``APIError``s everywhere; on ``/v1/chat/...``,
``/v1/completions`` and ``/v1/responses...`` they are written the way the ``openai`` SDK
reads them. Statuses stay the same except overload: Anthropic's 529 becomes 503, which
OpenAI clients know as "try again" (the SDK retries it, honouring ``retry-after``) without
mistaking it for their account's rate limit, as 429 would say.
"""
from __future__ import annotations

import re

from starlette.responses import JSONResponse

from preheat.server.errors import APIError, InvalidRequestError, NotFoundError, OverloadedError

OPENAI_PATH_PREFIXES = ("/v1/chat/", "/v1/completions", "/v1/responses")
SERVICE_UNAVAILABLE = 503
# OpenAI's codes where the status alone says which one applies.
_CODES_BY_STATUS = {401: "invalid_api_key"}
# Shared validation speaks the Messages API's field names; these are their names in
# Chat Completions and in the Responses API.
_KEY_TERMS = (
    (re.compile(r"\binvalid x-api-key"), "invalid API key"),
    (re.compile(r"\bx-api-key header is required"),
     "an API key is required (Authorization: Bearer <key>)"),
)
CHAT_TERMS = (
    (re.compile(r"\btools\.(\d+)\.input_schema"), r"tools.\1.function.parameters"),
    (re.compile(r"\boutput_config\.format\.schema"), "response_format.json_schema.schema"),
    (re.compile(r"\boutput_config\.format"), "response_format"),
    *_KEY_TERMS,
)
RESPONSES_TERMS = (
    (re.compile(r"\btools\.(\d+)\.input_schema"), r"tools.\1.parameters"),
    (re.compile(r"\boutput_config\.format\.schema"), "text.format.schema"),
    (re.compile(r"\boutput_config\.format"), "text.format"),
    *_KEY_TERMS,
)


def speaks_openai(path: str) -> bool:
    """Whether errors on ``path`` are written in OpenAI's shape."""
    return path.startswith(OPENAI_PATH_PREFIXES)


class ParamError(InvalidRequestError):
    """A 400 about one request field, named as OpenAI names it (``param``), with OpenAI's
    ``code`` where it has one."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class ModelNotFoundError(NotFoundError):
    """A 404 for a model id this server does not answer to."""

    param, code = "model", "model_not_found"


def openai_error_body(err: APIError, terms=CHAT_TERMS) -> dict:
    """``err`` as the ``openai`` SDK reads an error body, fields named by ``terms``."""
    message = err.message
    for pattern, replacement in terms:
        message = pattern.sub(replacement, message)
    return {"error": {
        "message": message,
        "type": "server_error" if err.status >= 500 else "invalid_request_error",
        "param": getattr(err, "param", None),
        "code": getattr(err, "code", None) or _CODES_BY_STATUS.get(err.status),
    }}


def openai_error_response(err: APIError, request_id: str, path: str) -> JSONResponse:
    """The HTTP response for ``err`` on the OpenAI-compatible ``path``."""
    status = SERVICE_UNAVAILABLE if isinstance(err, OverloadedError) else err.status
    terms = RESPONSES_TERMS if path.startswith("/v1/responses") else CHAT_TERMS
    return JSONResponse(openai_error_body(err, terms), status_code=status,
                        headers={**err.headers, "x-request-id": request_id})
