"""The messages between the API process and the engine core process, over one pipe.

Plain picklable dataclasses with no engine code behind them, so the API process can
speak to the core without importing torch or the model (see ``engine_process.py`` for
the API side, ``engine_core.py`` for the core's).
"""
from __future__ import annotations

from dataclasses import dataclass

from preheat.engine.errors import EngineError
from preheat.engine.output import CacheUsage, EngineEvent
from preheat.engine.request import GenerationRequest
from preheat.engine.stats import EngineStats

# ---- API process -> core ---------------------------------------------------------------


@dataclass(frozen=True)
class AddRequest:
    request: GenerationRequest


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class StatsQuery:
    call_id: int


@dataclass(frozen=True)
class Shutdown:
    pass


# ---- core -> API process ---------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    model_id: str
    context_window: int


@dataclass(frozen=True)
class StartFailed:
    message: str
    model_error: bool = False  # the model cannot run here (the message says why, in one line)


@dataclass(frozen=True)
class Admitted:
    """The request is queued; its prompt accounting (a pin hit has been refreshed)."""

    request_id: str
    usage: CacheUsage


@dataclass(frozen=True)
class Refused:
    request_id: str
    error: EngineError


@dataclass(frozen=True)
class StepOutput:
    """Everything one step produced, in order; an exception ends that request's stream."""

    events: list[tuple[str, EngineEvent | EngineError]]


@dataclass(frozen=True)
class StatsReply:
    call_id: int
    stats: EngineStats
