"""What the one reply pipeline (``server/reply.py``) yields to every API's renderer.

A reply is ``Opened``, then block events (``BlockStart``, ``TextPiece``, ``JsonPiece``,
``BlockStop``, from ``reply_parser.py``) with ``Ping`` wherever the engine is quiet for a
heartbeat, then ``Closed``. A streamed request that asks for logprobs also gets
``TokenLogprobs`` before the text of the tokens they report. A renderer writes them in its
API's shape: Anthropic's SSE events, a whole Message, OpenAI's chunks. Failures are raised
as ``APIError``s.
"""
from __future__ import annotations

from dataclasses import dataclass

from preheat.engine import Finished, TokenLogprob
from preheat.server.protocol import MessageResponse
from preheat.server.reply_parser import BlockEvent


@dataclass(frozen=True)
class Ping:
    """Nothing happened for a heartbeat: a stream's keep-alive, a moment to look for the client."""


@dataclass(frozen=True)
class Opened:
    """The engine admitted the request: the message as known at its start (content empty,
    prompt accounting, cache diagnostics)."""

    message: MessageResponse


@dataclass(frozen=True)
class Closed:
    """The reply is complete: the whole message, and the engine's account of its end.

    A renderer takes the next event after this one (there is none) once it has written
    the message: that is when a message thread stores the reply as its next turn.
    """

    message: MessageResponse
    finished: Finished
    logprobs: tuple[TokenLogprob, ...] = ()  # every generated token's, if the request asked


@dataclass(frozen=True)
class TokenLogprobs:
    """Logprobs of tokens generated since the last ones, before the text they wrote (a
    streamed request that asks for logprobs; the last ones may come with no text after
    them, before ``Closed``)."""

    logprobs: tuple[TokenLogprob, ...]


ReplyEvent = Ping | Opened | TokenLogprobs | BlockEvent | Closed
