"""``POST /v1/completions``: OpenAI's legacy text completions, a raw prompt continued as it is.

No chat template: the prompt (a string, tokenized as the model's tokenizer does by default,
BOS included when the model adds one, or token ids) is what the model reads, prepared by
``MessageService.prepare_raw`` and run through the one reply pipeline, so it shares the
engine, the prompt cache (a breakpoint at the end of the prompt, as Chat Completions sets
one) and the errors of the other APIs. Only the response is written anew: a
``text_completion`` object or its chunks, with the tokens' logprobs when asked.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from preheat.engine import SamplingParams, TokenLogprob
from preheat.server.completion_logprobs import LogprobsWriter
from preheat.server.completions_protocol import (Completion, CompletionChoice,
                                                 CompletionRequest, parse_completion_request)
from preheat.server.errors import APIError, NotFoundError
from preheat.server.messages import MessageService, PreparedMessage
from preheat.server.openai_chat import (DONE, FINISH_REASONS, PING, completion_usage,
                                        output_limit, sse_data)
from preheat.server.openai_errors import ModelNotFoundError, ParamError, openai_error_body
from preheat.server.protocol import MessageResponse, TextContent
from preheat.server.reply_events import Closed, Ping, ReplyEvent, TokenLogprobs
from preheat.server.reply_parser import TextPiece
from preheat.server.reply_response import reply_response

if TYPE_CHECKING:
    from preheat.server.request_record import RequestRecord

OBJECT = "text_completion"


@dataclass(frozen=True)
class Completions:
    """Runs legacy Completions requests on a ``MessageService``."""

    service: MessageService

    async def create(self, raw: bytes, namespace: str, request_id: str,
                     is_disconnected: Callable[[], Awaitable[bool]],
                     record: RequestRecord | None = None) -> Response | None:
        """The response to a request body; None if the client went away first. ``record``
        is the HTTP request's (metrics, access log)."""
        body = parse_completion_request(raw)
        prepared = await self._prepare(body, namespace, request_id, record)
        completion_id = f"cmpl-{prepared.message_id.removeprefix('msg_')}"
        created = int(time.time())
        logprobs = self._writer() if body.logprobs is not None else None
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        writer = TextChunkWriter(completion_id, created, body.model, include_usage, logprobs)

        async def whole(closed: Closed) -> dict:
            return to_completion(completion_id, created, closed, logprobs).model_dump()

        return await reply_response(self.service, prepared, request_id, body.stream, writer.render,
                                    whole, is_disconnected)

    def _writer(self) -> LogprobsWriter:
        tokenizer = self.service.engine.tokenizer
        return LogprobsWriter(lambda ids: tokenizer.decode(ids, skip_special_tokens=False))

    async def _prepare(self, body: CompletionRequest, namespace: str, request_id: str,
                       record: RequestRecord | None) -> PreparedMessage:
        token_ids, text = await asyncio.to_thread(self._tokenized, body.prompt)
        context_window = self.service.context_window
        if len(token_ids) >= context_window:  # one token must fit after the prompt
            raise ParamError(
                f"This model's maximum context length is {context_window} tokens; the prompt "
                f"is {len(token_ids)} tokens", "prompt", "context_length_exceeded")
        temperature = (body.temperature if body.temperature is not None
                       else self.service.default_temperature)
        params = SamplingParams(
            max_tokens=output_limit(body.max_tokens, context_window, "max_tokens"),
            temperature=temperature, top_p=body.top_p if body.top_p is not None else 1.0,
            seed=body.seed, stop=tuple(body.stop or ()), logprobs=body.logprobs)
        try:
            return await self.service.prepare_raw(body.model, token_ids, text, params, namespace,
                                                  request_id, record, stream=bool(body.stream))
        except NotFoundError:
            raise ModelNotFoundError(
                f"The model '{body.model}' does not exist on this server") from None

    def _tokenized(self, prompt: str | list[int]) -> tuple[list[int], str]:
        """The prompt's token ids and text: a string as the tokenizer encodes a document by
        default (its BOS when the model wants one), ids as they are (each must be one of
        the vocabulary's)."""
        tokenizer = self.service.engine.tokenizer
        if isinstance(prompt, str):
            return tokenizer.encode_prompt(prompt)[0], prompt
        vocabulary = tokenizer.vocab_size
        if (largest := max(prompt)) >= vocabulary:
            raise ParamError(f"prompt: token id {largest} is not in the model's vocabulary "
                             f"(ids 0 to {vocabulary - 1})", "prompt", "invalid_value")
        return prompt, tokenizer.decode(prompt, skip_special_tokens=False)


# ---- responses ------------------------------------------------------------------


def to_completion(completion_id: str, created: int, closed: Closed,
                  logprobs: LogprobsWriter | None) -> Completion:
    """A finished reply as a ``text_completion``."""
    message = closed.message
    return Completion(
        id=completion_id, created=created, model=message.model,
        choices=[CompletionChoice(
            text=reply_text(message),
            logprobs=logprobs.write(closed.logprobs) if logprobs is not None else None,
            finish_reason=FINISH_REASONS[message.stop_reason])],
        usage=completion_usage(message.usage))


def reply_text(message: MessageResponse) -> str:
    return "".join(b.text for b in message.content if isinstance(b, TextContent))


@dataclass
class TextChunkWriter:
    """Writes one completion's reply as ``text_completion`` chunks: one per piece of text
    (with the logprobs of the tokens since the last one, when asked), then one with the
    ``finish_reason``, the usage if asked, and ``[DONE]``."""

    completion_id: str
    created: int
    model: str
    include_usage: bool
    logprobs: LogprobsWriter | None = None
    _unsent: tuple[TokenLogprob, ...] = ()  # logprobs that wait for their text

    async def render(self, reply: AsyncIterable[ReplyEvent]) -> AsyncIterator[bytes]:
        """The chunks of ``reply``; a failure once the stream has started is an ``error``
        chunk."""
        try:
            async for event in reply:
                for chunk in self._event(event):
                    yield chunk
        except APIError as err:
            yield sse_data(openai_error_body(err))

    def _event(self, event: ReplyEvent) -> list[bytes]:
        if isinstance(event, Ping):
            return [PING]
        if isinstance(event, TokenLogprobs):
            self._unsent += event.logprobs
            return []
        if isinstance(event, TextPiece):
            return [self.choice(event.text)]
        if isinstance(event, Closed):
            out = [self.choice("", FINISH_REASONS[event.message.stop_reason])]
            if self.include_usage:
                out.append(self.chunk([], completion_usage(event.message.usage).model_dump()))
            return [*out, DONE]
        return []  # the reply opening, a text block opening or closing: nothing to say

    def choice(self, text: str, finish_reason: str | None = None) -> bytes:
        """A chunk of ``text``, with the logprobs not sent yet (when asked)."""
        logprobs = None
        if self.logprobs is not None:
            logprobs = self.logprobs.write(self._unsent).model_dump()
            self._unsent = ()
        return self.chunk([{"text": text, "index": 0, "logprobs": logprobs,
                            "finish_reason": finish_reason}])

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {"id": self.completion_id, "object": OBJECT,
                                "created": self.created, "model": self.model, "choices": choices}
        if self.include_usage:  # null on every chunk but the last, as OpenAI sends it
            data["usage"] = usage
        return sse_data(data)
