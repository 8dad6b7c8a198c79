"""The access log: one ``key=value`` line per API request, on the ``preheat.access`` logger.

Fields, in this order (``-`` when unknown): request_id, tenant (a short hash, never the
key), method, endpoint, model (as requested), stream, status (499: the client hung up),
prompt_tokens, cache_read_tokens, cache_write_tokens, input_tokens, output_tokens, ttft_ms,
total_ms, stop_reason (the engine's). A value with a space, quote or ``=`` is JSON-quoted.
"""
from __future__ import annotations

import json
import logging
import re

from preheat.server.request_record import RequestRecord

log = logging.getLogger("preheat.access")

_BARE = re.compile(r"[^\s\"=]+")


def log_access(record: RequestRecord) -> None:
    """Write ``record``'s line (the response has ended)."""
    log.info(access_line(record))


def access_line(record: RequestRecord) -> str:
    usage = record.usage
    fields = {
        "request_id": record.request_id,
        "tenant": record.tenant,
        "method": record.method,
        "endpoint": record.endpoint,
        "model": record.requested_model,
        "stream": None if record.stream is None else str(record.stream).lower(),
        "status": record.status,
        "prompt_tokens": usage and usage.prompt_tokens,
        "cache_read_tokens": usage and usage.cache_read_tokens,
        "cache_write_tokens": usage and usage.cache_write_tokens,
        "input_tokens": usage and usage.input_tokens,
        "output_tokens": record.output_tokens if usage else None,
        "ttft_ms": _ms(record.ttft),
        "total_ms": _ms(record.duration),
        "stop_reason": record.stop_reason,
    }
    return " ".join(f"{key}={_value(value)}" for key, value in fields.items())


def _ms(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds * 1000:.1f}"


def _value(value: object) -> str:
    text = "-" if value is None else str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text)
