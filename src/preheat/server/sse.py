"""Server-sent events framing, as the Anthropic SDK parses it."""
from __future__ import annotations

import json


def sse_event(event: str, data: dict) -> bytes:
    """One event: ``event: <type>`` and a single-line JSON ``data:``, then a blank line."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


PING = sse_event("ping", {"type": "ping"})
