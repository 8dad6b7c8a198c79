"""An engine stream that replays fixed events: API tests without a model."""
from __future__ import annotations


class ScriptedStream:
    """Yields the given events, raising any exception among them."""

    def __init__(self, *events):
        self.events = events
        self.request_id = "scripted"
        self.aborted = False

    async def __aiter__(self):
        for event in self.events:
            if isinstance(event, Exception):
                raise event
            yield event

    def abort(self) -> None:
        self.aborted = True
