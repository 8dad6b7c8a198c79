"""The engine core in a process of its own: messages in, one step at a time, events out.

``preheat serve`` starts it with ``EngineProcess``. On one process, the asyncio
server and the engine's Python code between tensor ops took turns on one GIL every
token (Python hands it over every 5 ms): a streaming user got half the engine's
speed. Here the core owns its GIL and every engine structure; it talks to the API
process over one pipe with the small messages of ``ipc.py``, admitting requests between
steps so its state is only ever touched by its own loop.
"""
from __future__ import annotations

import logging
import signal
from multiprocessing.connection import Connection

from preheat.loader.errors import ModelNotFoundError, UnsupportedModelError
from preheat.config import EngineConfig
from preheat.engine.errors import EngineError
from preheat.engine.interactive_arrivals import InteractiveArrivals
from preheat.engine.ipc import (AbortRequest, AddRequest, Admitted, Ready, Refused, Shutdown,
                                StartFailed, StatsQuery, StatsReply, StepOutput)
from preheat.engine.llm_engine import LLMEngine, build_engine
from preheat.engine.output import EngineEvent
from preheat.engine.request import GenerationRequest

log = logging.getLogger(__name__)

# How long a stopping core waits for pinned prefixes still being written to disk.
SHUTDOWN_FLUSH_SECONDS = 8.0


def run_engine_core(config: EngineConfig, conn: Connection, log_level: str = "INFO",
                    arrivals: InteractiveArrivals | None = None) -> None:
    """Entry point of the engine process: load the model, then serve ``conn`` until told to stop.

    ``arrivals`` is shared with the API process, which bumps it per interactive request."""
    # Ctrl-C reaches the whole process group; the API process decides when the core stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s[core]: %(message)s")
    try:
        engine, model_id = build_engine(config, arrivals=arrivals)
    except (ModelNotFoundError, UnsupportedModelError) as exc:  # the API process says it, in one line
        conn.send(StartFailed(str(exc), model_error=True))
        return
    except Exception as exc:  # reported to the API process, which exits with it
        log.exception("the engine could not start")
        conn.send(StartFailed(f"{type(exc).__name__}: {exc}"))
        return
    conn.send(Ready(model_id, engine.context_window))
    try:
        EngineCore(engine, conn).serve()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the API process is gone: nothing left to serve


class EngineCore:
    """Alternates between reading messages and running steps."""

    def __init__(self, engine: LLMEngine, conn: Connection):
        self.engine = engine
        self.conn = conn

    def serve(self) -> None:
        while True:
            # Read before the messages: an interactive request counted after this reading
            # may have missed them, so the step it would wait for stops for it.
            seen = self.engine.arrivals.count if self.engine.arrivals is not None else None
            # Idle: sleep until a message arrives. Busy: take what is there, then step.
            timeout = 0 if self.engine.has_work else None
            while self.conn.poll(timeout):
                if not self._handle(self.conn.recv()):
                    return
                timeout = 0
            if self.engine.has_work:
                self._step(seen)

    def _handle(self, message: object) -> bool:
        """Act on one message; False to stop."""
        if isinstance(message, AddRequest):
            self._admit(message.request)
        elif isinstance(message, AbortRequest):
            self.engine.abort(message.request_id)
        elif isinstance(message, StatsQuery):
            self.conn.send(StatsReply(message.call_id, self.engine.stats()))
        elif isinstance(message, Shutdown):
            self.engine.close(SHUTDOWN_FLUSH_SECONDS)
            return False
        else:
            log.error("ignoring an unknown message %r", message)
        return True

    def _admit(self, request: GenerationRequest) -> None:
        try:
            seq = self.engine.prepare(request)
        except EngineError as err:
            self.conn.send(Refused(request.request_id, err))
            return
        self.engine.enqueue(seq)
        self.conn.send(Admitted(request.request_id, seq.usage))

    def _step(self, arrivals_seen: int | None) -> None:
        events: list[tuple[str, EngineEvent | EngineError]]
        try:
            events = list(self.engine.step(arrivals_seen))
        except Exception:  # a bug or device error must not kill the server
            log.exception("engine step failed; aborting in-flight requests")
            failed = EngineError("internal error in the engine")
            events = [(request_id, failed) for request_id, _ in self.engine.abort_all("internal error")]
        if events:
            self.conn.send(StepOutput(events))
