"""Which model ids this server answers to, and their ``ModelInfo``."""
from __future__ import annotations

import logging

from preheat.server.errors import NotFoundError
from preheat.server.protocol import ModelInfo, ModelList

log = logging.getLogger(__name__)

# The SDK's documented value for an unknown release date.
UNKNOWN_RELEASE = "1970-01-01T00:00:00Z"


class ModelRegistry:
    """The loaded model under its own id, configured aliases, and optionally any ``claude-*``."""

    def __init__(self, model_id: str, context_window: int, aliases: tuple[str, ...] = (),
                 claude_aliases: bool = True):
        self.model_id = model_id
        self.context_window = context_window
        self.listed = (model_id, *(a for a in aliases if a != model_id))
        self.claude_aliases = claude_aliases
        self._announced: set[str] = set()

    def served(self, requested: str) -> str | None:
        """The served model for a requested id, or None: no error, nothing logged."""
        if requested in self.listed or (self.claude_aliases and requested.startswith("claude-")):
            return self.model_id
        return None

    def resolve(self, requested: str) -> str:
        """The served model for a requested id; 404 if this server doesn't answer to it."""
        served = self.served(requested)
        if served is None:
            raise NotFoundError(f"model: {requested}")
        if requested not in self.listed and requested not in self._announced:
            self._announced.add(requested)
            log.info("serving %r with %s", requested, self.model_id)
        return served

    def info(self, requested: str) -> ModelInfo:
        self.resolve(requested)
        name = self.model_id
        if requested != self.model_id:
            name = f"{requested} (served by {self.model_id})"
        return ModelInfo(id=requested, display_name=name, created_at=UNKNOWN_RELEASE,
                         max_input_tokens=self.context_window, max_tokens=self.context_window)

    def page(self, limit: int, after_id: str | None, before_id: str | None) -> ModelList:
        """A page of the listed ids, paginated as Anthropic's ``/v1/models`` is."""
        ids = list(self.listed)
        if after_id in ids:
            ids = ids[ids.index(after_id) + 1:]
        if before_id in ids:
            ids = ids[:ids.index(before_id)]
        chosen = ids[-limit:] if before_id and not after_id else ids[:limit]
        return ModelList(data=[self.info(i) for i in chosen], has_more=len(chosen) < len(ids),
                         first_id=chosen[0] if chosen else None,
                         last_id=chosen[-1] if chosen else None)
