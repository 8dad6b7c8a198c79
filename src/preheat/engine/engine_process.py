"""The API process's side of the engine core process (see ``engine_core.py``).

Everything here runs on the server's event loop: the pipe to the core is read and
written by loop callbacks (``loop_pipe.py``), so no extra thread competes for the GIL,
a burst of long prompts never blocks the loop, and each engine step costs the server
one message to unpickle and fan out to its streams.
The tokenizer is loaded here too: prompts are rendered and tokenized in the API
process while the core computes. Nothing here imports torch: the pipe's messages
(``ipc.py``) are plain data, and the core's code is imported in the child only.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection

from preheat.config import EngineConfig
from preheat.engine.engine_client import RequestStream
from preheat.engine.errors import EngineError, EngineOverloadedError, EngineStoppedError
from preheat.engine.interactive_arrivals import InteractiveArrivals
from preheat.engine.ipc import (AbortRequest, AddRequest, Admitted, Ready, Refused, Shutdown,
                                StartFailed, StatsQuery, StatsReply, StepOutput)
from preheat.engine.loop_pipe import LoopPipe
from preheat.engine.output import Finished, Started
from preheat.engine.request import GenerationRequest
from preheat.engine.stats import EngineStats, ReplicaState
from preheat.tokenizer.load import load_tokenizer
from preheat.tokenizer.tokenizer import Tokenizer

log = logging.getLogger(__name__)

_JOIN_SECONDS = 15.0


class EngineStartError(RuntimeError):
    """The engine process could not load the model (the message says why)."""

    def __init__(self, message: str, model_error: bool = False):
        super().__init__(message)
        self.model_error = model_error  # the model cannot run here, as opposed to a crash


_Core = tuple[multiprocessing.process.BaseProcess, Connection, Ready]


def _spawn_core(config: EngineConfig, log_level: str,
                arrivals: InteractiveArrivals) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    """Start a core process; it loads the model and then says ``Ready`` (see ``_await_ready``)."""
    # spawn, not fork: the child must not inherit this process's threads or torch state.
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=_core_main, args=(config, theirs, log_level, arrivals),
                          name="preheat-engine", daemon=True)
    process.start()
    theirs.close()
    return process, ours


def _core_main(config: EngineConfig, conn: Connection, log_level: str,
               arrivals: InteractiveArrivals) -> None:
    """The core process's entry point. The engine (torch, the model, the kernels) is
    imported here, in the child: this module is the API process's, which never loads it."""
    from preheat.engine.engine_core import run_engine_core
    run_engine_core(config, conn, log_level, arrivals)


def _await_ready(process: multiprocessing.process.BaseProcess, conn: Connection) -> Ready:
    """Wait until the core has loaded its model; raises EngineStartError."""
    try:
        first = conn.recv()
    except EOFError:
        process.join(_JOIN_SECONDS)
        raise EngineStartError(f"the engine process exited (code {process.exitcode})") from None
    if isinstance(first, StartFailed):
        process.join(_JOIN_SECONDS)
        raise EngineStartError(first.message, first.model_error)
    return first


def _start_core(config: EngineConfig, log_level: str, arrivals: InteractiveArrivals) -> _Core:
    process, conn = _spawn_core(config, log_level, arrivals)
    return process, conn, _await_ready(process, conn)


class EngineProcess:
    """An ``EngineClient`` whose engine core runs in a child process.

    If the core dies, every request in flight ends with an error and, with ``restart``
    (the default), a new core starts in its place: meanwhile ``restarting`` is True and
    new requests are refused as overloaded (529, which the SDKs retry); pinned prefixes
    come back from the disk tier. A core that cannot start again, or ``restart=False``,
    leaves the engine stopped and calls ``on_failure`` (the server then exits with 1 for
    a supervisor).
    """

    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Connection,
                 ready: Ready, tokenizer: Tokenizer, start_core: Callable[[], _Core] | None = None,
                 arrivals: InteractiveArrivals | None = None):
        self._process = process
        self.arrivals = arrivals  # shared with the core (and a restarted one)
        self._conn = conn  # until the loop drives it through ``_pipe``
        self._pipe: LoopPipe | None = None
        self.model_id = ready.model_id
        self.context_window = ready.context_window
        self.tokenizer = tokenizer
        self._start_core = start_core  # None: a dead core is not restarted
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[str, RequestStream] = {}
        self._admissions: dict[str, asyncio.Future[RequestStream]] = {}
        self._calls: dict[int, asyncio.Future[EngineStats]] = {}
        self._call_ids = itertools.count()
        self._stopped = False
        self.failed = False  # the core exited without being asked to, and is not coming back
        self.restarting = False  # a new core is starting in place of one that died
        self.restarts = 0  # cores started in place of dead ones
        self._restarter: asyncio.Task | None = None  # held: the loop keeps only weak references
        # Called on the loop when the engine is gone for good: a server without it should exit.
        self.on_failure: Callable[[], None] | None = None

    @classmethod
    def start(cls, config: EngineConfig, log_level: str = "INFO", *,
              restart: bool = True) -> EngineProcess:
        """Spawn the core and wait until its model is loaded; raises EngineStartError."""
        arrivals = InteractiveArrivals()
        process, conn = _spawn_core(config, log_level, arrivals)
        try:  # while the core loads the model
            tokenizer: Tokenizer | None = load_tokenizer(config.model, config.chat_template)
        except Exception:  # the core reports what is wrong with the model
            tokenizer = None
        ready = _await_ready(process, conn)
        if tokenizer is None:
            conn.send(Shutdown())
            process.join(_JOIN_SECONDS)
            raise EngineStartError("the model's tokenizer could not be loaded")
        return cls(process, conn, ready, tokenizer,
                   partial(_start_core, config, log_level, arrivals) if restart else None, arrivals)

    # ---- EngineClient ---------------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> RequestStream:
        """Send the request to the core and wait for its admission (a step at most)."""
        self._attach()
        if self.restarting:
            raise EngineOverloadedError("the engine is restarting after a failure; retry shortly")
        future = self._loop.create_future()
        self._admissions[request.request_id] = future
        self._send(AddRequest(request))
        if self.arrivals is not None:
            self.arrivals.arrived(request)  # after the send: a step that misses it has the request
        try:
            return await future
        except asyncio.CancelledError:
            self._abort(request.request_id)  # the caller left while it was being admitted
            raise
        finally:
            self._admissions.pop(request.request_id, None)

    async def stats(self) -> EngineStats:
        self._attach()
        if self.restarting:
            raise EngineOverloadedError("the engine is restarting after a failure")
        call_id = next(self._call_ids)
        future = self._loop.create_future()
        self._calls[call_id] = future
        self._send(StatsQuery(call_id))
        try:
            return await future
        finally:
            self._calls.pop(call_id, None)

    async def replicas(self) -> list[ReplicaState]:
        return [ReplicaState.of("engine", self.pid, await self.stats())]

    @property
    def pid(self) -> int:
        """The core process's (a new one after a restart)."""
        return self._process.pid

    def shutdown(self) -> None:
        """Stop the core (it finishes its current step first) and wait for it."""
        if not self._stopped:
            self._stopped = True  # a pipe found broken below is no failure to restart from
            try:
                if self._pipe is None:
                    self._conn.send(Shutdown())
                else:
                    self._pipe.send(Shutdown())
                    self._pipe.flush(_JOIN_SECONDS)
            except (OSError, ValueError):
                pass  # already gone (ValueError: its pipe was closed when it died)
            self._close(EngineStoppedError("the engine has stopped"))
        self._process.join(_JOIN_SECONDS)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    # ---- pipe -----------------------------------------------------------------------------

    def _attach(self) -> None:
        """Read the pipe from the running loop (the one the server runs on)."""
        if self._stopped:
            raise EngineStoppedError("the engine has stopped")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._pipe = LoopPipe(self._conn, self._loop, self._dispatch, self._fail)

    def _send(self, message: object) -> None:
        try:
            self._pipe.send(message)
        except OSError:
            self._fail()
            raise EngineStoppedError("the engine has stopped") from None

    def _abort(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        if not self._stopped and not self.restarting:
            self._send(AbortRequest(request_id))

    def _fail(self) -> None:
        if self.failed or self.restarting or self._stopped:  # a failed send and EOF both report it
            return
        self._process.join(1.0)
        log.error("the engine process exited unexpectedly (code %s)", self._process.exitcode)
        self._pipe.close()
        if self._start_core is None:
            self._give_up(EngineStoppedError("the engine process has exited"))
            return
        self.restarting = True
        self._end_requests(EngineStoppedError("the engine failed and is restarting; retry the request"))
        self._restarter = self._loop.create_task(self._restart())

    async def _restart(self) -> None:
        log.warning("starting a new engine process")
        try:
            process, conn, ready = await asyncio.to_thread(self._start_core)
        except EngineStartError as err:
            log.error("the engine could not start again: %s", err)
            self.restarting = False
            self._give_up(EngineStoppedError("the engine process has exited"))
            return
        if self._stopped:  # shut down while it started
            conn.send(Shutdown())
            await asyncio.to_thread(process.join, _JOIN_SECONDS)
            return
        self._process, self._conn = process, conn
        self._pipe = LoopPipe(conn, self._loop, self._dispatch, self._fail)
        self.restarts += 1
        self.restarting = False
        log.warning("the engine process is back (%s); restarts so far: %d", ready.model_id,
                    self.restarts)

    def _give_up(self, error: EngineError) -> None:
        self.failed = True
        self._close(error)
        if self.on_failure is not None:
            self.on_failure()

    def _dispatch(self, message: object) -> None:
        if isinstance(message, StepOutput):
            for request_id, event in message.events:
                self._deliver(request_id, event)
        elif isinstance(message, Admitted):
            stream = RequestStream(message.request_id, self._abort)
            stream.push(Started(message.usage))
            self._streams[message.request_id] = stream
            self._resolve(self._admissions.get(message.request_id), stream)
        elif isinstance(message, Refused):
            future = self._admissions.get(message.request_id)
            if future is not None and not future.done():
                future.set_exception(message.error)
        elif isinstance(message, StatsReply):
            self._resolve(self._calls.get(message.call_id), message.stats)
        else:
            log.error("ignoring an unknown message from the engine: %r", message)

    def _deliver(self, request_id: str, event: object) -> None:
        stream = self._streams.get(request_id)
        if stream is None:
            return  # aborted here while the core was stepping
        if isinstance(event, (Finished, EngineError)):
            del self._streams[request_id]
        stream.push(event)

    @staticmethod
    def _resolve(future: asyncio.Future | None, value: object) -> None:
        if future is not None and not future.done():
            future.set_result(value)

    def _close(self, error: EngineError) -> None:
        """No more messages: every waiter and stream gets ``error``."""
        self._stopped = True
        if self._pipe is not None:
            self._pipe.close()
        self._end_requests(error)

    def _end_requests(self, error: EngineError) -> None:
        for future in [*self._admissions.values(), *self._calls.values()]:
            if not future.done():
                future.set_exception(error)
        for stream in self._streams.values():
            stream.push(error)
        self._streams.clear()
