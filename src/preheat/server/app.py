"""The HTTP application: routes, error handlers, and what lives for the app's lifetime."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from preheat.cache_dir import resolve_cache_dir
from preheat.engine import EngineError
from preheat.server.auth import Authenticator
from preheat.server.batch_runner import BatchRunner
from preheat.server.batch_store import BatchStore
from preheat.server.cache_policy import CachePolicy
from preheat.server.diagnostics import DiagnosticsStore
from preheat.server.documents import DocumentReader
from preheat.server.drain import Drain
from preheat.server.errors import (APIError, InvalidRequestError, MethodNotAllowedError,
                                   NotFoundError, RequestTooLarge)
from preheat.server.memory_trim import MemoryTrimmer
from preheat.server.message_sse import message_sse
from preheat.server.message_batches import MessageBatches
from preheat.server.messages import MessageService
from preheat.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from preheat.server.metrics import ServerMetrics
from preheat.server.middleware import RequestIdMiddleware
from preheat.server.model_registry import ModelRegistry
from preheat.server.openai_chat import ChatCompletions
from preheat.server.openai_completions import Completions
from preheat.server.openai_errors import openai_error_response, speaks_openai
from preheat.server.openai_responses import MAX_LIST_LIMIT, Responses
from preheat.server.prewarm import Prewarmer
from preheat.server.reasoning import ReasoningFormat, ThinkingSigner, ThinkingSupport
from preheat.server.protocol import MessagesRequest, PromptRequest, parse_request
from preheat.server.request_record import CLIENT_CLOSED
from preheat.server.request_tracking import RequestTracker
from preheat.server.response_store import ResponseStore
from preheat.server.settings import ServerSettings
from preheat.server.thread_store import ThreadStore
from preheat.server.tool_format import form_for_template
from preheat.server.whole_reply import DISCONNECT_CHECK_SECONDS, whole_reply

if TYPE_CHECKING:
    from preheat.engine import EngineClient

log = logging.getLogger(__name__)


def thinking_support(tokenizer, settings: ServerSettings) -> ThinkingSupport | None:
    """Thinking blocks for a model with a reasoning format (None for one without)."""
    fmt = ReasoningFormat.of(tokenizer)
    if fmt is None:
        return None
    key = settings.thinking_key_file or resolve_cache_dir() / "thinking.key"
    log.info("the model has a reasoning format (%s): replies that think are thinking blocks",
             "enable_thinking" if fmt.switchable else "opened by its prompt"
             if fmt.opened_by_prompt else "<think> tags")
    return ThinkingSupport(fmt, ThinkingSigner.from_file(key))


def create_app(engine: EngineClient, settings: ServerSettings) -> FastAPI:
    """An Anthropic Messages API in front of ``engine``.

    The engine is owned by the caller: the app never starts or stops it.
    """
    registry = ModelRegistry(engine.model_id, engine.context_window, settings.aliases,
                             settings.claude_aliases)
    service = MessageService(engine, registry, CachePolicy.from_settings(settings),
                             DiagnosticsStore(settings.diagnostics_capacity),
                             settings.ping_interval_seconds,
                             form_for_template(engine.tokenizer.chat_template),
                             ThreadStore(settings.thread_ttl_seconds, settings.max_threads,
                                         settings.max_thread_tokens),
                             default_temperature=settings.default_temperature,
                             documents=DocumentReader(settings.images),
                             thinking=thinking_support(engine.tokenizer, settings))
    auth = Authenticator(settings.api_keys)
    chat = ChatCompletions(service)
    completions = Completions(service)
    responses = Responses(service, ResponseStore(settings.responses_file,
                                                 settings.response_retention_seconds),
                          hold_seconds=settings.thread_ttl_seconds)
    batch_store = BatchStore(settings.batches_file)
    batch_runner = BatchRunner(service, batch_store, settings.batch_concurrency,
                               settings.batch_retention_seconds)
    batches = MessageBatches(batch_store, batch_runner, settings.batch_lifetime_seconds)

    metrics, drain = ServerMetrics(), Drain()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        tasks = [asyncio.create_task(MemoryTrimmer(lambda: len(drain)).run()),
                 asyncio.create_task(batch_runner.run())]
        if settings.preheat_file is not None:
            prewarmer = Prewarmer(service, settings, settings.preheat_file.read_text())
            await prewarmer.warm()  # pinned before the server takes requests
            tasks.append(asyncio.create_task(prewarmer.keep_warm()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            responses.store.close()
            batch_store.close()

    app = FastAPI(title="preheat", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, dependencies=[Depends(drain.admit)],  # 529 while draining
                  redirect_slashes=False)  # Anthropic answers /v1/messages/ with a 404, not a 307
    app.state.drain = drain  # `preheat serve` drains it on SIGTERM/SIGINT
    app.add_middleware(RequestTracker, metrics=metrics, drain=drain)  # inside the request id
    app.add_middleware(RequestIdMiddleware)
    _install_error_handlers(app)

    @app.post("/v1/messages")
    async def create_message(request: Request) -> Response:
        namespace = auth.namespace(request.headers)
        body = parse_request(MessagesRequest, await _read_body(request, settings.max_request_bytes))
        prepared = await service.prepare(body, namespace, request.state.request_id,
                                         request.state.record)
        if body.stream:
            reply = await service.run(prepared)
            # runs after the last event or once the client disconnects; a no-op after Closed
            return StreamingResponse(message_sse(reply, prepared.request_id),
                                     media_type="text/event-stream",
                                     headers={"cache-control": "no-cache"},
                                     background=BackgroundTask(reply.close))
        reply = await service.run(prepared, heartbeat=DISCONNECT_CHECK_SECONDS)
        closed = await whole_reply(reply, request.is_disconnected)
        if closed is None:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(closed.message.model_dump())

    @app.post("/v1/messages/batches")
    async def create_batch(request: Request) -> Response:
        namespace = auth.namespace(request.headers)
        raw = await _read_body(request, settings.max_batch_bytes)
        return JSONResponse(await batches.create(raw, namespace, _base_url(request)))

    @app.get("/v1/messages/batches")
    async def list_batches(request: Request, limit: int = Query(20, ge=1, le=1000),
                           after_id: str | None = None,
                           before_id: str | None = None) -> Response:
        namespace = auth.namespace(request.headers)
        return JSONResponse(await batches.page(namespace, limit, after_id, before_id,
                                               _base_url(request)))

    @app.get("/v1/messages/batches/{batch_id}")
    async def get_batch(request: Request, batch_id: str) -> Response:
        namespace = auth.namespace(request.headers)
        return JSONResponse(await batches.retrieve(namespace, batch_id, _base_url(request)))

    @app.post("/v1/messages/batches/{batch_id}/cancel")
    async def cancel_batch(request: Request, batch_id: str) -> Response:
        namespace = auth.namespace(request.headers)
        return JSONResponse(await batches.cancel(namespace, batch_id, _base_url(request)))

    @app.delete("/v1/messages/batches/{batch_id}")
    async def delete_batch(request: Request, batch_id: str) -> Response:
        namespace = auth.namespace(request.headers)
        return JSONResponse(await batches.delete(namespace, batch_id))

    @app.get("/v1/messages/batches/{batch_id}/results")
    async def batch_results(request: Request, batch_id: str) -> Response:
        namespace = auth.namespace(request.headers)
        lines = await batches.results(namespace, batch_id)
        return StreamingResponse(lines, media_type="application/x-jsonl")

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> Response:
        auth.namespace(request.headers)
        body = parse_request(PromptRequest, await _read_body(request, settings.max_request_bytes))
        return JSONResponse((await service.count_tokens(body)).model_dump(exclude_none=True))

    async def create_with(api, request: Request) -> Response:
        """An OpenAI-shaped API's create: the raw body to its service, 499 if the client left."""
        namespace = auth.namespace(request.headers)
        raw = await _read_body(request, settings.max_request_bytes)
        response = await api.create(raw, namespace, request.state.request_id,
                                    request.is_disconnected, request.state.record)
        return Response(status_code=CLIENT_CLOSED) if response is None else response

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: Request) -> Response:
        return await create_with(chat, request)

    @app.post("/v1/completions")
    async def create_completion(request: Request) -> Response:
        return await create_with(completions, request)

    @app.post("/v1/responses")
    async def create_response(request: Request) -> Response:
        return await create_with(responses, request)

    @app.get("/v1/responses/{response_id}")
    async def get_response(request: Request, response_id: str) -> Response:
        namespace = auth.namespace(request.headers)
        return JSONResponse(await responses.retrieve(namespace, response_id))

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(request: Request, response_id: str) -> Response:
        namespace = auth.namespace(request.headers)
        return JSONResponse(await responses.delete(namespace, response_id))

    @app.get("/v1/responses/{response_id}/input_items")
    async def list_input_items(request: Request, response_id: str,
                               limit: int = Query(20, ge=1, le=MAX_LIST_LIMIT),
                               order: Literal["asc", "desc"] = "desc",
                               after: str | None = None) -> Response:
        namespace = auth.namespace(request.headers)
        return JSONResponse(await responses.input_items(namespace, response_id, limit, order,
                                                        after))

    @app.get("/v1/models")
    async def list_models(request: Request, limit: int = Query(20, ge=1, le=1000),
                          after_id: str | None = None, before_id: str | None = None) -> Response:
        auth.namespace(request.headers)
        return JSONResponse(registry.page(limit, after_id, before_id).model_dump())

    @app.get("/v1/models/{model_id:path}")
    async def get_model(request: Request, model_id: str) -> Response:
        auth.namespace(request.headers)
        return JSONResponse(registry.info(model_id).model_dump())

    @app.api_route("/", methods=["GET", "HEAD"])
    async def root() -> Response:
        """A connectivity probe (Claude Code sends one before its first request)."""
        return JSONResponse({"status": "ok", "model": engine.model_id})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        metrics.count_batch_items(await asyncio.to_thread(batch_store.counts))
        return Response(await metrics.scrape(engine), media_type=METRICS_CONTENT_TYPE)

    @app.get("/health")
    async def health() -> Response:
        if drain.draining:  # probes take this instance out of rotation
            return JSONResponse({"status": "shutting_down", "model": engine.model_id},
                                status_code=503)
        try:
            stats = None if engine.restarting else await engine.stats()
        except EngineError:  # the engine died while it was asked
            stats = None
        if stats is None:  # a new engine is loading the model, or there is none
            return JSONResponse({"status": "restarting" if engine.restarting else "stopped",
                                 "model": engine.model_id, "engine_restarts": engine.restarts},
                                status_code=503)
        try:
            replicas = [asdict(replica) for replica in await engine.replicas()]
        except EngineError:
            replicas = []
        return JSONResponse({"status": "ok", "model": engine.model_id,
                             "engine_restarts": engine.restarts, **asdict(stats),
                             "replicas": replicas,
                             "batch_items": await asyncio.to_thread(batch_store.counts)})

    return app


def _base_url(request: Request) -> str:
    """This server as the client reached it (for URLs it hands out)."""
    return str(request.base_url).rstrip("/")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _install_error_handlers(app: FastAPI) -> None:
    def respond(request: Request, err: APIError) -> JSONResponse:
        if speaks_openai(request.url.path):
            return openai_error_response(err, request.state.request_id, request.url.path)
        return JSONResponse(err.body(request.state.request_id), status_code=err.status,
                            headers=err.headers)

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return respond(request, err)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        if err.status_code == 405:
            return respond(request, MethodNotAllowedError(
                f"method {request.method} is not allowed on {request.url.path}"))
        return respond(request, NotFoundError(f"{request.method} {request.url.path} not found"))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return respond(request, InvalidRequestError(f"{where}: {first['msg']}"))
