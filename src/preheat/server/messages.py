"""The message service: a Messages API request -> a prepared engine request -> a ``Reply``.

``prepare`` validates and renders a request (the model, the prompt and its cache
breakpoints, the grammar a reply is held to, a thread's history); ``run`` submits it and
returns the one reply pipeline (``reply.py``) that every API renders. Other APIs
translate their requests into a ``MessagesRequest`` and come through here too. It never
sees tensors: only token ids, breakpoints and events.
"""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from preheat.engine import EngineError, GenerationRequest, SamplingParams
from preheat.server.cache_policy import CachePolicy, Mark
from preheat.server.context_edits import EditedRequest, apply_edits
from preheat.server.diagnostics import DiagnosticsStore, message_digests
from preheat.server.documents import DocumentReader
from preheat.server.errors import InvalidRequestError, from_engine_error
from preheat.server.held_history import HeldHistory
from preheat.server.model_input import model_input
from preheat.server.model_registry import ModelRegistry
from preheat.server.output_grammar import FREE_TEXT, OutputPlan, plan_output
from preheat.server.prompt_builder import (BuiltPrompt, ChatTurn, PromptBlock, build_prompt,
                                           continue_prompt)
from preheat.server.protocol import MessageResponse, MessagesRequest, PromptRequest, TokenCount
from preheat.server.reasoning import PLAIN, GenerationPrompt, ThinkingSupport
from preheat.server.reply import Reply
from preheat.server.reply_parser import ReplyParser
from preheat.server.thinking_parser import ThinkingReply, ThinkingReplyParser
from preheat.server.thread_store import ThreadStore, ThreadTurn
from preheat.server.tool_format import HERMES, ToolCallForm

if TYPE_CHECKING:
    from preheat.engine import EngineClient, Finished
    from preheat.server.request_record import RequestRecord


Request = TypeVar("Request", bound=PromptRequest)


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class SamplingOverrides:
    """Sampling past what the Messages API allows, for APIs that allow it (OpenAI's
    temperatures up to 2, a seed); None keeps the request's own."""

    temperature: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class PreparedMessage:
    """A validated request, ready for the engine."""

    message_id: str
    request_id: str
    namespace: str
    model: str  # the served model; responses echo ``body.model``
    body: MessagesRequest
    prompt: BuiltPrompt
    output: OutputPlan
    tool_form: ToolCallForm
    generation: GenerationRequest
    continues: ThreadTurn | None = None  # the thread turn this request continues from
    record: RequestRecord | None = None  # metrics and access log (None: not an HTTP request)
    context_management: dict | None = None  # what the request's edits did, for the response
    sent_messages: tuple[str, ...] = ()  # digests of the messages before edits (diagnostics)
    thinking: ThinkingReply | None = None  # the reply thinks (a reasoning model, asked to)

    @property
    def is_prewarm(self) -> bool:
        """Writes its cache entries and generates nothing: no content block."""
        return self.body.max_tokens == 0

    @property
    def edit_types(self) -> tuple[str, ...]:
        """The context edits that changed this request's messages."""
        applied = (self.context_management or {}).get("applied_edits", ())
        return tuple(edit["type"] for edit in applied)

    def reply_parser(self) -> ReplyParser | ThinkingReplyParser:
        answer = ReplyParser(tool_calls=self.output.tool_calls, form=self.tool_form)
        return answer if self.thinking is None else self.thinking.parser(answer)


class MessageService:
    """Validates, renders and runs message requests against the engine."""

    def __init__(self, engine: EngineClient, registry: ModelRegistry, policy: CachePolicy,
                 diagnostics: DiagnosticsStore, ping_interval: float,
                 tool_form: ToolCallForm = HERMES, threads: ThreadStore | None = None,
                 default_temperature: float = 1.0, documents: DocumentReader | None = None,
                 thinking: ThinkingSupport | None = None):
        self.engine = engine
        self.threads = threads or ThreadStore()
        self.registry = registry
        self.policy = policy
        self.diagnostics = diagnostics
        self.ping_interval = ping_interval
        self.tool_form = tool_form  # how the model writes tool calls
        self.default_temperature = default_temperature  # for requests that set none
        self.documents = documents or DocumentReader()  # documents and images as text
        self.thinking = thinking  # None: the model has no reasoning format

    @property
    def context_window(self) -> int:
        """Tokens the served model reads and writes in one request, prompt included."""
        return self.engine.context_window

    async def build(self, body: PromptRequest, max_tokens: int | None = None) -> BuiltPrompt:
        """Resolve the model and render the prompt (off the event loop: long prompts take
        ms); one sure to be over ``max_tokens`` is a 400 before it is tokenized."""
        self.registry.resolve(body.model)
        return await asyncio.to_thread(build_prompt, body, self.engine.tokenizer, self.tool_form,
                                       max_tokens, self._generation(body))

    def _generation(self, body: PromptRequest) -> GenerationPrompt:
        """How the prompt ends: with the model's thinking switched on or off."""
        if self.thinking is None:
            return PLAIN
        return self.thinking.format.generation(body.thinking is not None and body.thinking.on)

    async def count_tokens(self, body: PromptRequest) -> TokenCount:
        """The prompt's size as ``/v1/messages`` would build it (its 400s included); with
        ``context_management``, after the edits, and the size before them."""
        body, edits = await self._edited(await self._model_input(body))
        prompt = await self.build(body)
        self.policy.breakpoints(body, prompt)  # the same 400s as a real request
        await asyncio.to_thread(plan_output, body, self.tool_form)
        before = None
        if edits is not None:
            original = edits.original_input_tokens
            before = {"original_input_tokens": len(prompt.token_ids) if original is None
                      else original}
        return TokenCount(input_tokens=len(prompt.token_ids), context_management=before)

    async def _model_input(self, body: Request) -> Request:
        signer = self.thinking.signer if self.thinking is not None else None
        return await asyncio.to_thread(model_input, body, self.documents, signer)

    async def _edited(self, body: Request) -> tuple[Request, EditedRequest | None]:
        """``body`` with its ``context_management`` edits applied (none: itself)."""
        if body.context_management is None:
            return body, None
        if getattr(body, "thread", None) is not None:
            raise InvalidRequestError("context_management can't be combined with thread: "
                                      "a thread's history is held as it was")
        self.registry.resolve(body.model)
        edits = await asyncio.to_thread(apply_edits, body, self._prompt_tokens)
        return edits.request, edits

    def _prompt_tokens(self, body: PromptRequest) -> int:
        return len(build_prompt(body, self.engine.tokenizer, self.tool_form,
                                generation=self._generation(body)).token_ids)

    async def prepare(self, body: MessagesRequest, namespace: str, request_id: str,
                      record: RequestRecord | None = None,
                      sampling: SamplingOverrides = SamplingOverrides(), *,
                      history: HeldHistory | None = None, hold_seconds: float = 0.0,
                      background: bool = False) -> PreparedMessage:
        """Validate and render a request; a thread continue holds its turn until the
        request's reply ends (``run``). ``record`` (the HTTP request's) is told the caller
        and model, and watches the engine's events. What is not model input (``model_input``)
        is left out.

        ``history`` (another API's held conversation, whose preamble ``body`` repeats)
        comes before ``body.messages``, from its exact tokens; ``hold_seconds`` keeps the
        reply's KV that long for the conversation's next request (a thread's: its TTL).
        ``background`` requests (batch work) run only on capacity no interactive one needs."""
        if record is not None:
            record.identify(namespace, body.model, self.registry.served(body.model), body.stream)
        # A max_tokens past what the prompt leaves of the context window is no error, as on
        # Claude today: the reply runs until the window is full and stops with
        # model_context_window_exceeded. Only a prompt that does not fit is refused.
        body = await self._model_input(body)
        sent = await asyncio.to_thread(message_digests, body.messages)
        body, edits = await self._edited(body)
        applied = None if edits is None else {"applied_edits": edits.applied}
        turn = self.threads.begin(body, namespace)
        if turn is not None:
            history, hold_seconds = turn.history, self.threads.ttl
        elif body.thread is not None:
            hold_seconds = self.threads.ttl
        try:
            prepared = await self._prepare(body, namespace, request_id, turn, history,
                                           hold_seconds, record, sampling)
            prepared.generation.background = background
            return replace(prepared, context_management=applied, sent_messages=sent)
        except BaseException:
            if turn is not None:
                self.threads.end_continue(turn, succeeded=False)
            raise

    async def _prepare(self, body: MessagesRequest, namespace: str, request_id: str,
                       turn: ThreadTurn | None, history: HeldHistory | None,
                       hold_seconds: float, record: RequestRecord | None,
                       sampling: SamplingOverrides) -> PreparedMessage:
        if history is None:
            prompt = await self.build(body, self.context_window)
        else:
            body = body.model_copy(update={"system": history.system, "tools": history.tools,
                                           "messages": history.messages + body.messages})
            self.registry.resolve(body.model)
            prompt = await asyncio.to_thread(continue_prompt, body, self.engine.tokenizer,
                                             self.tool_form, history.token_ids,
                                             history.blocks, self.context_window,
                                             self._generation(body))
        breakpoints = self.policy.breakpoints(body, prompt)
        output = await asyncio.to_thread(plan_output, body, self.tool_form)
        if body.max_tokens == 0:
            output = FREE_TEXT  # a pre-warm generates nothing to constrain
        if output.grammar is not None and prompt.prefill and (
                output.calls_only or not output.tool_calls):
            raise InvalidRequestError(
                "a final assistant message (prefill) cannot be combined with a forced "
                "tool_choice or output_config.format: the reply's shape is fixed from its start")
        thinking = self._thinking_reply(body, prompt, output)
        temperature = (sampling.temperature if sampling.temperature is not None
                       else body.temperature if "temperature" in body.model_fields_set
                       else self.default_temperature)
        params = SamplingParams(max_tokens=body.max_tokens, temperature=temperature,
                                top_k=body.top_k or 0, top_p=body.top_p or 1.0,
                                seed=sampling.seed, stop=tuple(body.stop_sequences),
                                grammar=output.grammar, distinct_segments=output.distinct_calls)
        message_id = new_message_id()
        generation = GenerationRequest(
            prompt.token_ids, params, namespace, breakpoints, message_id,
            hold_seconds=hold_seconds, speculative=body.speculative,
            resume_points=prompt.preamble_end())
        return PreparedMessage(message_id, request_id, namespace, self.registry.model_id, body,
                               prompt, output, self.tool_form, generation, turn, record,
                               thinking=thinking)

    async def prepare_raw(self, model: str, token_ids: list[int], text: str,
                          params: SamplingParams, namespace: str, request_id: str,
                          record: RequestRecord | None = None, *,
                          stream: bool = False) -> PreparedMessage:
        """Prepare a prompt sent as it is, with no chat template, tools or grammar (OpenAI's
        legacy completions): ``token_ids`` are the prompt, ``text`` what they say. It is
        cached as the Chat Completions API caches a prompt, with a ``5m`` breakpoint at its
        end, and its reply is one text block."""
        if record is not None:
            record.identify(namespace, model, self.registry.served(model), stream)
        self.registry.resolve(model)
        body = MessagesRequest.model_construct(model=model, messages=[], stream=stream,
                                               max_tokens=params.max_tokens)
        prompt = BuiltPrompt(text, list(token_ids), [PromptBlock("messages", len(token_ids), None)],
                             tools_text="", tool_choice_text="", system_text="",
                             turns=[ChatTurn("prompt", text)], prefill=False)
        message_id = new_message_id()
        generation = GenerationRequest(prompt.token_ids, params, namespace,
                                       self.policy.to_engine([Mark(len(token_ids), "5m")]),
                                       message_id)
        return PreparedMessage(message_id, request_id, namespace, self.registry.model_id, body,
                               prompt, FREE_TEXT, self.tool_form, generation, record=record)

    def _thinking_reply(self, body: MessagesRequest, prompt: BuiltPrompt,
                        output: OutputPlan) -> ThinkingReply | None:
        """How the reply thinks (None: it does not), and the 400s Anthropic gives for what
        thinking can't be combined with."""
        asked = body.thinking
        if asked is None or not asked.on:
            return None
        if asked.budget_tokens is not None and 0 < body.max_tokens <= asked.budget_tokens:
            raise InvalidRequestError("max_tokens must be greater than thinking.budget_tokens")
        if self.thinking is None or body.max_tokens == 0:
            return None  # the model has no reasoning format: it answers without thinking
        if output.calls_only:
            raise InvalidRequestError("thinking may not be enabled when tool_choice forces "
                                      "tool use")
        if prompt.prefill:
            raise InvalidRequestError("a final assistant message (prefill) cannot be combined "
                                      "with thinking")
        if output.grammar is not None and not output.tool_calls:
            raise InvalidRequestError("thinking cannot be combined with output_config.format "
                                      "on this server: the format is held from the reply's "
                                      "first token")
        generation = self._generation(body)
        return ThinkingReply(self.thinking.signer, opened=generation.opened,
                             show=asked.display != "omitted")

    async def run(self, prepared: PreparedMessage, *, heartbeat: float | None = None) -> Reply:
        """Hand the request to the engine and return its reply, to be rendered by an API.

        A refusal (too long, overloaded) raises here as an API error, before any response
        has started. The reply pings after every ``heartbeat`` seconds without output
        (default: the server's SSE ping interval).
        """
        try:
            stream = await self.engine.submit(prepared.generation)
        except BaseException as err:
            self._end_thread(prepared, None, None)
            if isinstance(err, EngineError):
                raise from_engine_error(err) from None
            raise
        if prepared.record is not None:
            stream = prepared.record.watch(stream)
        return Reply(prepared, stream, heartbeat or self.ping_interval, self.policy,
                     self.diagnostics, lambda message, finished: self._end_thread(
                         prepared, message, finished))

    def _end_thread(self, prepared: PreparedMessage, message: MessageResponse | None,
                    finished: Finished | None) -> None:
        """A threaded request ended: store its response as the thread's next turn (when it
        succeeded) and release the turn it continued."""
        if prepared.continues is not None:
            self.threads.end_continue(prepared.continues, succeeded=message is not None)
        if message is None or prepared.body.thread is None:
            return
        self.threads.record(prepared.message_id, prepared.namespace,
                            self.history_after(prepared, message, finished))

    def history_after(self, prepared: PreparedMessage, message: MessageResponse,
                      finished: Finished) -> HeldHistory:
        """The conversation ``prepared`` answered, with its reply, to continue from."""
        reply_ids = list(finished.output_ids)
        while reply_ids and reply_ids[-1] in self.engine.tokenizer.eos_token_ids:
            reply_ids.pop()  # the template writes the end of the turn in the next prompt
        return HeldHistory.after(prepared.body, prepared.prompt,
                                 [b.model_dump() for b in message.content], reply_ids)
