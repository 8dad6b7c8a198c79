"""One API request as an operator sees it: who asked, for what, what it cost, how it ended.

``RequestTracker`` opens a record for every API request (``request.state.record``). The
endpoint fills it in: ``identify`` once it knows the caller and the model, ``watch`` around
the engine's event stream, which notes usage, token times and the stop reason as events
pass. Latency and token series move live; the tracker ``close``s the record when the
response has ended, which counts the request and writes its access-log line.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from preheat.engine import (CacheUsage, EngineError, EngineEvent, Finished, Started, StopReason,
                            TextDelta)
from preheat.server.errors import APIError, from_engine_error

if TYPE_CHECKING:
    from starlette.types import Scope

    from preheat.engine import RequestStream
    from preheat.server.metrics import ServerMetrics

# Not a real HTTP status: the client closed the connection before the answer was complete.
CLIENT_CLOSED = 499
# The endpoint label of a request no route matched (a 404).
UNMATCHED = "unmatched"


def tenant_hash(namespace: str) -> str:
    """A short stable name for a tenant in logs: a hash of its cache namespace, itself a
    hash of the API key: the same for every request with one key, and never the key."""
    return hashlib.sha256(f"preheat-tenant\0{namespace}".encode()).hexdigest()[:12]


class RequestRecord:
    """What one request did; filled in while it runs, closed when its response ends."""

    def __init__(self, request_id: str, scope: Scope, metrics: ServerMetrics,
                 clock: Callable[[], float] = time.monotonic):
        self.request_id = request_id
        self.method: str = scope.get("method", "-")
        self._scope = scope  # the router adds the matched route to it
        self._metrics = metrics
        self._clock = clock
        self.started_at = clock()
        self.ended_at: float | None = None
        self.tenant = "-"
        self.requested_model = "-"  # as the client named it
        self.model = ""  # the served model: a metric label, so never a client's free text
        self.stream: bool | None = None
        self.usage: CacheUsage | None = None  # set once the engine admitted the request
        self.output_tokens = 0
        self.first_token_at: float | None = None
        self._last_token_at: float | None = None
        self.stop_reason: str | None = None  # the engine's: eos, max_tokens, stop_sequence, ...
        self.status: int | None = None  # how it ended, known at close
        self._outcome: int | None = None  # a status the run came to before the response ended
        self.interruption: APIError | None = None
        self._stream: RequestStream | None = None

    # ---- what the endpoint tells ------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The matched route's path template (``/v1/models/{model_id:path}``): bounded labels."""
        return getattr(self._scope.get("route"), "path", UNMATCHED)

    def identify(self, namespace: str, requested_model: str, served_model: str | None,
                 stream: bool | None = None) -> None:
        """The caller's namespace (from auth), the model it asked for and the one serving it
        (None: this server serves no such model)."""
        self.tenant = tenant_hash(namespace)
        self.requested_model = requested_model
        self.model = served_model or ""
        self.stream = stream

    def watch(self, stream: RequestStream) -> WatchedStream:
        """``stream``, with its events noted here on their way to the consumer."""
        self._stream = stream
        if self.interruption is not None:  # interrupted while it was being admitted
            self._end_stream(self.interruption)
        return WatchedStream(stream, self)

    def interrupt(self, error: APIError) -> None:
        """End the request's generation now with ``error`` (a shutdown): its consumer raises
        it, which a stream sends as an ``error`` event, and the engine drops the request.
        A request that never reaches the engine (``/v1/models``, ...) is left to finish."""
        if self.interruption is not None or self.done:
            return
        self.interruption = error
        if self._stream is not None:
            self._end_stream(error)

    def close(self, http_status: int | None) -> None:
        """The response has ended; ``http_status`` is what was sent (None: nothing was).

        An error response says how it ended. A success's status went out before its body:
        a stream that then failed, or whose client hung up, ended as the run says."""
        self.ended_at = self._clock()
        if http_status is not None and not 200 <= http_status < 300:
            self.status = http_status
        else:
            self.status = self._outcome or http_status or 500

    # ---- derived ------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._outcome is not None or self.stop_reason is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started_at

    @property
    def duration(self) -> float:
        return (self.ended_at if self.ended_at is not None else self._clock()) - self.started_at

    # ---- what the engine's events say ---------------------------------------------------------

    def saw(self, event: EngineEvent) -> None:
        if isinstance(event, Started):
            self.usage = event.usage
            self._metrics.count_prompt(self.endpoint, self.model, event.usage)
        elif isinstance(event, TextDelta):
            self._tokens(event.output_tokens, as_text=True)
        elif isinstance(event, Finished):
            self.usage = event.usage
            self.stop_reason = event.stop_reason.value
            self._tokens(event.output_tokens, as_text=False)
            if event.stop_reason is StopReason.ABORTED:
                self._end(500)  # the engine gave up on it; the client gets an api_error

    def failed(self, status: int) -> None:
        self._end(status)

    def abandoned(self) -> None:
        """Its consumer stopped before the end: the client hung up."""
        self._end(CLIENT_CLOSED)

    def _tokens(self, total: int, *, as_text: bool) -> None:
        """The request has generated ``total`` tokens so far."""
        now, new = self._clock(), total - self.output_tokens
        if new <= 0:
            return
        gap = None  # the first tokens' time is the TTFT; tokens counted at the end have none
        if self.first_token_at is None:
            self.first_token_at = now
            self._metrics.first_token(self.endpoint, self.model, now - self.started_at)
        elif as_text:
            gap = now - self._last_token_at
        self._last_token_at = now
        self.output_tokens = total
        self._metrics.count_output(self.endpoint, self.model, new, gap)

    def _end(self, status: int) -> None:
        if self._outcome is None:
            self._outcome = status

    def _end_stream(self, error: APIError) -> None:
        self._end(error.status)
        # The error wakes a consumer waiting for the next event; the abort frees the engine's
        # blocks. A consumer busy elsewhere finds its stream ended and WatchedStream raises.
        self._stream.push(error)
        self._stream.abort()


class WatchedStream:
    """A ``RequestStream`` whose events are noted in a ``RequestRecord`` as they pass."""

    def __init__(self, stream: RequestStream, record: RequestRecord):
        self._stream = stream
        self._record = record
        self.request_id = stream.request_id

    async def __aiter__(self) -> AsyncIterator[EngineEvent]:
        record = self._record
        try:
            async for event in self._stream:
                record.saw(event)
                yield event
        except APIError as err:
            record.failed(err.status)
            raise
        except EngineError as err:
            record.failed(from_engine_error(err).status)
            raise
        if record.interruption is not None and record.stop_reason is None:
            raise record.interruption

    def abort(self) -> None:
        """Stop generating; before the end, that means the client went away."""
        if not self._record.done:
            self._record.abandoned()
        self._stream.abort()
