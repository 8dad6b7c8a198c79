"""The engine: paged KV, the prefix cache and its tiers, continuous batching, the model step.

What is named here is the engine's vocabulary for its callers (the HTTP API, a Ray Serve
ingress, the CLI): a request and its sampling and cache breakpoints, the events that come
back, the errors, the client protocol and its streams, the engine's stats. All of it is
plain data, so importing it loads no torch, model or kernel: the API process imports
only this. An engine to run is made by ``engine_process.EngineProcess`` (its core in a
process of its own) or ``async_engine.AsyncEngine`` (on a thread, for tests and the CLI).
"""
from preheat.engine.engine_client import EngineClient, RequestStream
from preheat.engine.errors import (EngineError, EngineOverloadedError, EngineStoppedError,
                                   PromptTooLongError, RequestTooLargeError)
from preheat.engine.grammar_check import check_grammar
from preheat.engine.output import (CacheUsage, EngineEvent, Finished, Started, StopReason,
                                   TextDelta, TokenLogprob)
from preheat.engine.request import (CacheBreakpoint, DistinctSegments, GenerationRequest,
                                    SamplingParams)
from preheat.engine.stats import EngineStats, ReplicaState

__all__ = [
    "CacheBreakpoint", "CacheUsage", "DistinctSegments", "EngineClient", "EngineError",
    "EngineEvent", "EngineOverloadedError", "EngineStats", "EngineStoppedError", "Finished",
    "GenerationRequest", "PromptTooLongError", "ReplicaState", "RequestStream",
    "RequestTooLargeError", "SamplingParams", "Started", "StopReason", "TextDelta",
    "TokenLogprob", "check_grammar",
]
