"""An engine stream that replays fixed events, and an engine that hands it out: API tests
without a model."""
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


class ScriptedEngine:
    """An engine client whose request gets ``stream``: a ``MessageService`` without a model."""

    model_id = "scripted"
    context_window = 8192
    restarting = False
    restarts = 0

    def __init__(self, stream: ScriptedStream, tokenizer=None):
        self.stream = stream
        self.tokenizer = tokenizer
        self.submitted = []

    async def submit(self, request):
        self.submitted.append(request)
        return self.stream
