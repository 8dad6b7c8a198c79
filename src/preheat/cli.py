"""The ``preheat`` command: ``serve`` the Messages API, ``generate`` one reply, or ``chat``
and ``bench`` against a server.

Every ``serve`` and engine option ``--some-name`` can also be set with the
environment variable ``PREHEAT_SOME_NAME`` (repeatable options take a comma
list); a flag on the command line wins over the environment.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path

from preheat import __version__
from preheat.cache_dir import resolve_cache_dir
from preheat.client.bench.command import add_bench_parser
from preheat.client.chat.command import add_chat_parser
from preheat.config import EngineConfig
from preheat.loader.errors import ModelNotFoundError, UnsupportedModelError
from preheat.server.settings import ServerSettings

log = logging.getLogger("preheat")
MODEL_ERROR_STATUS = 2  # a model preheat cannot run: as argparse's status for bad arguments

ENV_PREFIX = "PREHEAT_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def parse_bool(text: str) -> bool:
    if text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    raise argparse.ArgumentTypeError(f"expected one of {sorted(_TRUE | _FALSE)}, got {text!r}")


class _AppendReplacingDefault(argparse.Action):
    """Like ``append``, but flags given on the command line replace the environment's list."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest)
        setattr(namespace, self.dest, [*([] if current is self.default else current), values])


def add_option(container, flag: str, *, convert: Callable = str, default=None,
               repeat: bool = False, switch: bool = False, help: str = "") -> None:
    """An option whose default comes from its ``PREHEAT_*`` variable when that is set."""
    env = env_name(flag)
    raw = os.environ.get(env)
    if raw is not None:
        try:
            if repeat:
                default = [convert(part.strip()) for part in raw.split(",") if part.strip()]
            else:
                default = parse_bool(raw) if switch else convert(raw)
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise SystemExit(f"preheat: {env}={raw!r}: {err}") from None
    help = f"{help} [env {env}]".strip()
    if switch:
        container.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                               help=help)
    elif repeat:
        container.add_argument(flag, action=_AppendReplacingDefault, type=convert,
                               default=default or [], help=help)
    else:
        shown = f" (default: {default})" if default not in (None, "") else ""
        container.add_argument(flag, type=convert, default=default, help=help + shown)


# ---- engine options, one per EngineConfig field ----------------------------------------


def _field_converter(hint) -> Callable:
    """``int | None`` -> int, ``Path | None`` -> Path, ..."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


ENGINE_HELP = {
    "model": "a .gguf file or Hugging Face folder (default: the embedded SmolLM2)",
    "chat_template": "a Jinja chat template file to use instead of the model's own (or, for a "
                     "model that ships none, instead of its family's turn format)",
    "device": "torch device",
    "dtype": "weight and activation dtype (the KV cache's is --kv-dtype)",
    "weight_format": "auto (a GGUF's quantized weights run as the file has them, on a CPU with "
                     "AVX-512 VNNI or AVX2; float weights as --dtype), dense (every weight as --dtype: "
                     "the exact reference) or int4 (lossy: re-quantizes every matmul to 4 bits)",
    "kv_dtype": "KV cache dtype: float32, float16 (half the memory and bandwidth), bfloat16 or "
                "auto (float16 with quantized weights, else --dtype: dense stays exact)",
    "block_size": "tokens per KV cache block",
    "kv_cache_tokens": "KV cache pool size in tokens (default: a share of free memory)",
    "kv_cache_bytes": "KV cache pool size in bytes (instead of --kv-cache-tokens)",
    "kv_cache_memory_share": "share of the memory free at start that the KV pool takes when no "
                             "size is given (default: 0.25 of RAM, 0.8 of a GPU's)",
    "kv_disk_dir": "where pinned prefixes' KV is kept on disk (default: <cache dir>/kv)",
    "kv_disk_bytes": "disk quota of pinned prefixes' KV in bytes (default: 25%% of the disk's "
                     "free space; 0 keeps them in RAM only)",
    "max_step_tokens": "token budget of one engine step (prefill chunk + decodes)",
    "max_running": "sequences decoding at once",
    "batch_step_ms": "while interactive requests come, what an arriving one may wait for of "
                     "Message Batches' work (one layer of a step: steps of it stop between "
                     "layers) is kept to about a quarter of one of their steps, and at least "
                     "this long (-1: never limited)",
    "speculative": "speculative decoding: off, ngram (drafts from the request's own prompt "
                   "and output) or suffix (and from its API key's earlier replies); the tokens "
                   "are those of decoding without it",
    "speculative_tokens": "the longest draft a sequence verifies in one step",
    "speculative_max_batch": "no drafts in a step that decodes more sequences than this (a "
                             "full batch already shares each weight read)",
    "max_waiting": "queued requests before new ones get 529 overloaded",
    "max_pinned_fraction": "share of the KV pool that pinned prefixes may hold in RAM (the "
                           "least recently used beyond it live on in the disk tier)",
    "context_window": "context window in tokens (default: the model's)",
    "cache_dir": "where file hashes, the KV disk tier and the stores live (default: the user "
                 "cache dir)",
    "num_threads": "torch CPU threads (default: torch's choice)",
}


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """One option per ``EngineConfig`` field, so new engine settings appear without edits here."""
    hints = typing.get_type_hints(EngineConfig)
    group = parser.add_argument_group("engine")
    for field in dataclasses.fields(EngineConfig):
        add_option(group, "--" + field.name.replace("_", "-"),
                   convert=_field_converter(hints[field.name]), default=field.default,
                   help=ENGINE_HELP.get(field.name, f"EngineConfig.{field.name}"))


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EngineConfig)})


# ---- serve ------------------------------------------------------------------------------


def add_serve_parser(commands) -> None:
    parser = commands.add_parser("serve", help="serve the Anthropic Messages API")
    defaults = ServerSettings()
    add_option(parser, "--host", default=defaults.host, help="address to listen on")
    add_option(parser, "--port", convert=int, default=defaults.port, help="port to listen on")
    add_option(parser, "--api-key", repeat=True,
               help="accept only this key (repeatable); others get 401. Default: any key")
    add_option(parser, "--alias", repeat=True, help="another model id to serve (repeatable)")
    add_option(parser, "--claude-aliases", switch=True, default=defaults.claude_aliases,
               help="serve any claude-* model id with the loaded model")
    add_option(parser, "--min-cache-tokens", convert=int, default=defaults.min_cache_tokens,
               help="shortest prefix a cache breakpoint pins")
    add_option(parser, "--ttl-5m-seconds", convert=float, default=defaults.ttl_5m_seconds,
               help='what the API\'s "5m" cache TTL lasts here')
    add_option(parser, "--ttl-1h-seconds", convert=float, default=defaults.ttl_1h_seconds,
               help='what the API\'s "1h" cache TTL lasts here')
    add_option(parser, "--max-request-bytes", convert=int, default=defaults.max_request_bytes,
               help="largest request body accepted (413 above)")
    add_option(parser, "--default-temperature", convert=float,
               default=defaults.default_temperature,
               help="sampling temperature of requests that set none (0 is greedy)")
    add_option(parser, "--images", default=defaults.images,
               help='an image block for this text-only model: "reject" (a 400 naming it, '
                    'as Anthropic answers for a model without vision) or "placeholder" (a '
                    'short note in its place, so an agent\'s session goes on)')
    add_option(parser, "--thinking-key-file", convert=Path,
               help="for a model that thinks: the key that signs its thinking blocks, made "
                    "on first use (default: thinking.key in the cache dir)")
    add_option(parser, "--preheat", convert=Path,
               help="a file whose text is pinned as a system prompt at start and kept warm")
    add_option(parser, "--preheat-ttl", default=defaults.preheat_ttl,
               help='cache TTL of the --preheat prompt, "5m" or "1h"')
    add_option(parser, "--preheat-key", default=defaults.preheat_key,
               help="on a server without --api-key: the client key to warm the prompt for")
    add_option(parser, "--thread-ttl-seconds", convert=float, default=defaults.thread_ttl_seconds,
               help="how long a stored response of a message thread may be continued (and the "
                    "KV of a stored Responses API response is held for its next turn)")
    add_option(parser, "--max-threads", convert=int, default=defaults.max_threads,
               help="stored thread responses kept per API key (the oldest go first)")
    add_option(parser, "--max-thread-tokens", convert=int, default=defaults.max_thread_tokens,
               help="tokens of stored thread responses kept per API key")
    add_option(parser, "--responses-db", convert=Path,
               help="the SQLite file of stored Responses API responses (default: "
                    "responses.sqlite3 in the cache dir)")
    add_option(parser, "--response-retention-days", convert=float,
               default=defaults.response_retention_seconds / 86400,
               help="how long a stored Responses API response is kept")
    add_option(parser, "--batches-db", convert=Path,
               help="the SQLite file of Message Batches (default: batches.sqlite3 in the "
                    "cache dir)")
    add_option(parser, "--batch-concurrency", convert=int, default=defaults.batch_concurrency,
               help="batch items run at once (on capacity no interactive request needs)")
    add_option(parser, "--batch-lifetime-seconds", convert=float,
               default=defaults.batch_lifetime_seconds,
               help="how long a batch may run before its unfinished items expire")
    add_option(parser, "--batch-retention-days", convert=float,
               default=defaults.batch_retention_seconds / 86400,
               help="how long an ended batch and its results are kept")
    add_option(parser, "--shutdown-grace-seconds", convert=float,
               default=defaults.shutdown_grace_seconds,
               help="on SIGTERM or SIGINT: how long running requests may finish (new ones get "
                    "529) before the rest are ended with an error; a second signal exits at once")
    add_option(parser, "--log-level", default="info", help="debug, info, warning or error")
    add_option(parser, "--engine-process", switch=True, default=True,
               help="run the engine in a process of its own, off the HTTP server's GIL "
                    "(--no-engine-process: on a thread of the server's process)")
    add_option(parser, "--engine-restart", switch=True, default=True,
               help="if the engine process dies, start a new one in its place (in-flight "
                    "requests get an error; new ones 529 until it is back); "
                    "--no-engine-restart: exit with status 1 for a supervisor instead")
    scale = parser.add_argument_group("scale-out on Ray Serve (pip install 'preheat[ray]')")
    add_option(scale, "--replicas", convert=int, default=0,
               help="serve with this many engine replicas on Ray Serve, each request routed "
                    "to the replica holding its prefix (0: one engine, no Ray)")
    add_option(scale, "--ray-address",
               help="deploy onto this running Ray cluster (auto: the one on this machine) "
                    "instead of starting a local Ray instance")
    add_option(scale, "--route-load-spread", convert=int, default=16,
               help="the router sends a request to the least loaded replica instead of the "
                    "one holding its prefix when the busiest has this many requests more "
                    "than the idlest...")
    add_option(scale, "--route-load-ratio", convert=float, default=1.5,
               help="...and more than this times its load")
    add_engine_options(parser)
    parser.set_defaults(func=serve)


def server_settings(args: argparse.Namespace) -> ServerSettings:
    """``preheat serve``'s HTTP-side options, checked."""
    if args.preheat_ttl not in ("5m", "1h"):
        raise SystemExit(f'--preheat-ttl must be "5m" or "1h", not {args.preheat_ttl!r}')
    if args.images not in ("reject", "placeholder"):
        raise SystemExit(f'--images must be "reject" or "placeholder", not {args.images!r}')
    if args.preheat is not None and not args.preheat.is_file():
        raise SystemExit(f"--preheat: no such file: {args.preheat}")
    return ServerSettings(
        host=args.host, port=args.port, api_keys=tuple(args.api_key), aliases=tuple(args.alias),
        claude_aliases=args.claude_aliases, min_cache_tokens=args.min_cache_tokens,
        ttl_5m_seconds=args.ttl_5m_seconds, ttl_1h_seconds=args.ttl_1h_seconds,
        max_request_bytes=args.max_request_bytes, default_temperature=args.default_temperature,
        images=args.images, preheat_file=args.preheat,
        thinking_key_file=(args.thinking_key_file
                           or resolve_cache_dir(args.cache_dir) / "thinking.key"),
        preheat_ttl=args.preheat_ttl, preheat_key=args.preheat_key,
        thread_ttl_seconds=args.thread_ttl_seconds, max_threads=args.max_threads,
        max_thread_tokens=args.max_thread_tokens,
        responses_file=(args.responses_db
                        or resolve_cache_dir(args.cache_dir) / "responses.sqlite3"),
        response_retention_seconds=args.response_retention_days * 86400,
        batches_file=args.batches_db or resolve_cache_dir(args.cache_dir) / "batches.sqlite3",
        batch_concurrency=args.batch_concurrency,
        batch_lifetime_seconds=args.batch_lifetime_seconds,
        batch_retention_seconds=args.batch_retention_days * 86400,
        shutdown_grace_seconds=args.shutdown_grace_seconds)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from preheat.engine.engine_process import EngineProcess, EngineStartError
    from preheat.server.app import create_app
    from preheat.server.graceful_server import GracefulServer

    settings = server_settings(args)
    if args.replicas > 0:
        try:
            from preheat.scale.launch import serve_on_ray
        except ImportError as err:
            raise SystemExit(f"preheat: --replicas needs Ray Serve ({err}): "
                             "pip install 'preheat[ray]'") from None
        return serve_on_ray(settings, engine_config(args), scale_config(args), args.log_level)
    config = engine_config(args)
    check_model(config)
    try:
        engine = (EngineProcess.start(config, args.log_level, restart=args.engine_restart)
                  if args.engine_process else _engine_on_a_thread(config))
    except EngineStartError as err:
        if err.model_error:
            print(f"preheat: {err}", file=sys.stderr)
            return MODEL_ERROR_STATUS
        raise SystemExit(f"preheat: the engine could not start: {err}") from None
    server: GracefulServer | None = None
    try:
        app = create_app(engine, settings)
        # uvicorn's own grace covers only stragglers: the drain has ended every request by then
        server = GracefulServer(uvicorn.Config(app, host=settings.host, port=settings.port,
                                               log_level=args.log_level, timeout_graceful_shutdown=5),
                                app.state.drain, settings.shutdown_grace_seconds)
        if isinstance(engine, EngineProcess):
            # Without its engine (not restarted, or unable to start again) the server can
            # only fail: stop it (in-flight streams have had their error event) and exit
            # non-zero so a supervisor restarts it.
            engine.on_failure = lambda: setattr(server, "should_exit", True)
        log.info("serving %s on http://%s:%d", engine.model_id, settings.host, settings.port)
        server.run()
    finally:
        # After a second signal, exit now: the engine process (a daemon) ends with this one,
        # without waiting for its disk writes.
        if server is None or not server.forced:
            engine.shutdown()
    return 1 if server.forced or isinstance(engine, EngineProcess) and engine.failed else 0


def scale_config(args: argparse.Namespace):
    from preheat.scale.scale_config import ScaleConfig
    if args.replicas < 1:
        raise SystemExit("--replicas must be at least 1 to scale out")
    return ScaleConfig(replicas=args.replicas, ray_address=args.ray_address,
                       route_load_spread=args.route_load_spread,
                       route_load_ratio=args.route_load_ratio)


def scale_from_options(options: dict[str, str]):
    """The Serve application for ``preheat serve`` options given as ``{name: value}``
    (``serve run preheat.scale.app:build replicas=2 num-threads=1``); a switch takes
    true or false."""
    from preheat.scale.app import application
    commands = argparse.ArgumentParser().add_subparsers()
    add_serve_parser(commands)
    parser = commands.choices["serve"]
    switches = {flag for action in parser._actions
                if isinstance(action, argparse.BooleanOptionalAction)
                for flag in action.option_strings}
    argv = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if flag in switches:
            argv.append(flag if parse_bool(str(value)) else "--no-" + flag[2:])
        else:
            argv.append(f"{flag}={value}")
    args = parser.parse_args(argv)
    args.replicas = max(args.replicas, 1)
    return application(server_settings(args), engine_config(args), scale_config(args),
                       args.log_level.upper())


def _engine_on_a_thread(config: EngineConfig):
    """The engine in this process (torch and the model with it): --no-engine-process."""
    from preheat.engine.async_engine import AsyncEngine
    return AsyncEngine.from_config(config)


# ---- generate ---------------------------------------------------------------------------


def add_generate_parser(commands) -> None:
    parser = commands.add_parser("generate", help="stream one chat reply to the terminal")
    parser.add_argument("prompt", help="the user message")
    parser.add_argument("--system", default=None, help="a system prompt")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7, help="0 is greedy")
    add_option(parser, "--log-level", default="warning", help="debug, info, warning or error")
    add_engine_options(parser)
    parser.set_defaults(func=generate)


def generate(args: argparse.Namespace) -> int:
    asyncio.run(_generate(args))
    return 0


async def _generate(args: argparse.Namespace) -> None:
    from preheat.engine.async_engine import AsyncEngine
    from preheat.engine.output import TextDelta
    from preheat.engine.request import GenerationRequest, SamplingParams
    from preheat.server.prompt_builder import build_prompt
    from preheat.server.protocol import PromptRequest

    config = engine_config(args)
    check_model(config)
    engine = AsyncEngine.from_config(config)
    try:
        body = PromptRequest.model_validate({
            "model": engine.model_id, "system": args.system,
            "messages": [{"role": "user", "content": args.prompt}]})
        prompt = build_prompt(body, engine.tokenizer)
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
        async for event in await engine.submit(GenerationRequest(prompt.token_ids, params)):
            if isinstance(event, TextDelta):
                print(event.text, end="", flush=True)
        print()
    finally:
        engine.shutdown()


# ---- entry point ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The parser; a new subcommand is one more ``add_*_parser(commands)``."""
    parser = argparse.ArgumentParser(prog="preheat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"preheat {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(commands)
    add_generate_parser(commands)
    add_chat_parser(commands)
    add_bench_parser(commands)
    return parser


def check_model(config: EngineConfig) -> None:
    """A model or chat template preheat cannot use is one line and status 2 (``main``), before
    any process starts; torch-free, so the API process stays so."""
    from preheat.loader.model_check import check_model as check

    check(config.model)
    if config.chat_template is not None and not Path(config.chat_template).is_file():
        raise ModelNotFoundError(f"--chat-template {config.chat_template}: no such file")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ModelNotFoundError, UnsupportedModelError) as err:
        print(f"preheat: {err}", file=sys.stderr)
        return MODEL_ERROR_STATUS


if __name__ == "__main__":
    sys.exit(main())
