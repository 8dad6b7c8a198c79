"""The engine on a thread of the caller's process (tests, ``preheat generate``).

The event loop never runs model compute: ``submit`` only validates and
enqueues, and the engine thread hands events back with
``call_soon_threadsafe``. Callers iterate a ``RequestStream``. ``preheat serve``
uses ``EngineProcess`` instead, which keeps the model off the server's GIL.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable

from preheat.config import EngineConfig
from preheat.engine.errors import EngineError, EngineStoppedError
from preheat.engine.engine_client import RequestStream
from preheat.engine.interactive_arrivals import InteractiveArrivals
from preheat.engine.llm_engine import LLMEngine, build_engine
from preheat.engine.output import EngineEvent, Finished, Started
from preheat.engine.request import GenerationRequest
from preheat.engine.stats import EngineStats, ReplicaState

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5


class AsyncEngine:
    """An ``EngineClient`` whose engine steps on a background thread."""

    def __init__(self, engine: LLMEngine, model_id: str):
        """``engine.arrivals``, if set, is bumped here per interactive request."""
        self.engine = engine
        self.model_id = model_id
        self.tokenizer = engine.tokenizer
        self.config = engine.config
        self.context_window = engine.context_window
        self.restarting = False  # a failed step fails its requests; the thread goes on
        self.restarts = 0
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, RequestStream]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="preheat-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: EngineConfig, *, clock: Callable[[], float] = time.monotonic,
                    loaded=None) -> AsyncEngine:
        engine, model_id = build_engine(config, clock=clock, loaded=loaded,
                                        arrivals=InteractiveArrivals())
        return cls(engine, model_id)

    async def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request; raises EngineError subclasses for requests that can't run."""
        if self._stopped:
            raise EngineStoppedError("the engine has stopped")
        seq = self.engine.prepare(request)
        stream = RequestStream(request.request_id, self._abort)
        stream.push(Started(seq.usage))
        with self._lock:
            self._streams[request.request_id] = (asyncio.get_running_loop(), stream)
        self.engine.enqueue(seq)
        if self.engine.arrivals is not None:
            self.engine.arrivals.arrived(request)  # after the enqueue: a step that misses it has it
        self._wake.set()
        return stream

    async def stats(self) -> EngineStats:
        return self.engine.stats()

    async def replicas(self) -> list[ReplicaState]:
        return [ReplicaState.of("engine", os.getpid(), self.engine.stats())]

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)
        self.engine.close()

    def _abort(self, request_id: str) -> None:
        with self._lock:
            self._streams.pop(request_id, None)
        self.engine.abort(request_id)
        self._wake.set()

    def _deliver(self, request_id: str, item: EngineEvent | BaseException) -> None:
        with self._lock:
            entry = self._streams.get(request_id)
            if entry is not None and (isinstance(item, (Finished, BaseException))):
                del self._streams[request_id]
        if entry is not None:
            loop, stream = entry
            loop.call_soon_threadsafe(stream.push, item)

    def _loop(self) -> None:
        while not self._stopped:
            if not self.engine.has_work:
                self._wake.wait(_IDLE_WAIT_S)
                self._wake.clear()
                continue
            try:
                events = self.engine.step()
            except Exception:  # a bug or device error must not kill the server
                log.exception("engine step failed; aborting in-flight requests")
                for request_id, _ in self.engine.abort_all("internal error"):
                    self._deliver(request_id, EngineError("internal error in the engine"))
                continue
            for request_id, event in events:
                self._deliver(request_id, event)
        with self._lock:
            pending = list(self._streams)
        for request_id in pending:
            self._deliver(request_id, EngineStoppedError("the engine has stopped"))
