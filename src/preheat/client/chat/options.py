"""What ``preheat chat``'s command line decides and its session uses: which server and
model, how long a reply, the system prompt and the temperature."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatOptions:
    base_url: str
    api_key: str
    model: str
    max_tokens: int
    system: str | None
    temperature: float | None
