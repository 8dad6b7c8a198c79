"""``preheat serve --preheat FILE``: pin a system prompt at start and keep it warm.

The prompt is written with a pre-warm request (``max_tokens: 0``) for every
configured API key, then re-sent every half TTL: each re-send is a cache hit,
which refreshes the entry at the cost of prefilling a few tokens.
"""
from __future__ import annotations

import asyncio
import logging

from preheat.server.auth import namespace_for
from preheat.server.messages import MessageService
from preheat.server.middleware import new_request_id
from preheat.server.protocol import MessagesRequest
from preheat.server.reply_events import Opened
from preheat.server.settings import ServerSettings

log = logging.getLogger(__name__)


class Prewarmer:
    """Pins one system prompt for every tenant that may use it, and keeps it pinned."""

    def __init__(self, service: MessageService, settings: ServerSettings, system_prompt: str):
        self.service = service
        keys = settings.api_keys or (settings.preheat_key,)
        self.namespaces = [namespace_for(k) for k in keys]
        self.interval = settings.ttl_seconds(settings.preheat_ttl) / 2
        self.body = MessagesRequest.model_validate({
            "model": service.registry.model_id,
            "max_tokens": 0,
            "system": [{"type": "text", "text": system_prompt,
                        "cache_control": {"type": "ephemeral", "ttl": settings.preheat_ttl}}],
            "messages": [{"role": "user", "content": "."}],
        })

    async def warm(self) -> None:
        """Write (or refresh) the prompt's cache entry in every namespace."""
        for namespace in self.namespaces:
            prepared = await self.service.prepare(self.body, namespace, new_request_id())
            if not prepared.generation.breakpoints:
                log.warning("the preheat prompt (%d tokens) is shorter than the minimum cacheable "
                            "length; nothing is pinned", prepared.prompt.blocks[0].end)
                return
            async for event in await self.service.run(prepared):
                if isinstance(event, Opened):
                    usage = event.message.usage
                    log.info("preheat: %d prompt tokens written, %d read",
                             usage.cache_creation_input_tokens, usage.cache_read_input_tokens)

    async def keep_warm(self) -> None:
        """Refresh forever (until cancelled at shutdown); a failed round is retried next time."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.warm()
            except Exception:
                log.exception("preheat refresh failed")
