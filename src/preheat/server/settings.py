"""How the HTTP server behaves; the engine has its own ``EngineConfig``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FIVE_MINUTES = 300.0
ONE_HOUR = 3600.0


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    # When non-empty, requests must present one of these (x-api-key or Bearer); else 401.
    api_keys: tuple[str, ...] = ()
    # Extra model ids served by the loaded model.
    aliases: tuple[str, ...] = ()
    # Serve any ``claude-*`` id too, so notebooks with hard-coded Claude models run unchanged.
    claude_aliases: bool = True
    # Anthropic's minimum cacheable prefix; shorter breakpoints are plain input.
    min_cache_tokens: int = 1024
    # What the API's "5m" and "1h" TTLs mean here (tests shorten them).
    ttl_5m_seconds: float = FIVE_MINUTES
    ttl_1h_seconds: float = ONE_HOUR
    # Anthropic's body limit for the Messages API.
    max_request_bytes: int = 32 * 1024 * 1024
    # The sampling temperature of a request that sets none (Anthropic's default is 1.0; a
    # small model rambles at it, and clients such as Claude Code never set one).
    default_temperature: float = 1.0
    # An image block for the text-only model: a 400 naming it ("reject", Anthropic's answer
    # for a model without vision), or a short note in its place ("placeholder").
    images: str = "reject"
    # The key that signs a thinking model's thinking blocks (made on first use; None:
    # thinking.key in the cache dir).
    thinking_key_file: Path | None = None
    # A ping is sent on an SSE stream after this long without another event.
    ping_interval_seconds: float = 5.0
    # Recent requests remembered for cache diagnostics.
    diagnostics_capacity: int = 2048
    # System prompt pinned at start and kept warm (``preheat serve --preheat FILE``).
    preheat_file: Path | None = None
    preheat_ttl: str = "1h"
    # Which client key the preheated prompt is pinned for when no api_keys are set.
    preheat_key: str = ""
    # Message threads: how long a stored response may be continued, and per key how many
    # stored responses and how many of their tokens are kept (the oldest go first).
    thread_ttl_seconds: float = FIVE_MINUTES
    max_threads: int = 256
    max_thread_tokens: int = 2_000_000
    # Stored Responses API responses: their SQLite file (None: in memory, for this process
    # only) and how long they are kept (OpenAI: 30 days). Their KV is held for the next
    # turn for thread_ttl_seconds.
    responses_file: Path | None = None
    response_retention_seconds: float = 30 * 24 * ONE_HOUR
    # Message Batches: their SQLite file (None: in memory), how many items run at once,
    # how long a batch may run (Anthropic: 24 h) and how long its results are kept after
    # it ends (Anthropic: 29 days); a create's body limit (Anthropic: 256 MB).
    batches_file: Path | None = None
    batch_concurrency: int = 16
    batch_lifetime_seconds: float = 24 * ONE_HOUR
    batch_retention_seconds: float = 29 * 24 * ONE_HOUR
    max_batch_bytes: int = 256 * 1024 * 1024
    # On SIGTERM/SIGINT: how long running requests may finish (new ones get 529 meanwhile)
    # before the rest are ended with an error event.
    shutdown_grace_seconds: float = 30.0

    def ttl_seconds(self, ttl: str) -> float:
        """Seconds for an API TTL label ("5m" or "1h")."""
        return self.ttl_1h_seconds if ttl == "1h" else self.ttl_5m_seconds
