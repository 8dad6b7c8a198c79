"""``preheat chat``: a multi-turn terminal chat with a running server."""
from __future__ import annotations

import argparse
from pathlib import Path

from preheat.client.arguments import DEFAULT_BASE_URL, add_client_options
from preheat.client.chat.options import ChatOptions


def add_chat_parser(commands) -> None:
    parser = commands.add_parser(
        "chat", help="chat with a running server in the terminal",
        description="Chat with a running preheat server (or any Anthropic API). The system "
                    "prompt and the last two user turns are cached; after each reply a footer "
                    "shows its tokens, the cached share of the prompt, TTFT and tok/s. "
                    "quit, exit or Ctrl-D leaves; Ctrl-C stops a reply.")
    add_client_options(parser, DEFAULT_BASE_URL, f"the server (default: {DEFAULT_BASE_URL})")
    parser.add_argument("--max-tokens", type=int, default=1024,
                        help="longest reply (default: 1024)")
    system = parser.add_mutually_exclusive_group()
    system.add_argument("--system", metavar="TEXT", help="a system prompt (cached)")
    system.add_argument("--system-file", metavar="PATH", type=Path,
                        help="a file whose text is the system prompt, e.g. a long document")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature, 0 is greedy (default: the server's)")
    parser.set_defaults(func=chat, log_level="warning")


def chat(args: argparse.Namespace) -> int:
    from preheat.client.chat.session import run_chat  # the SDK takes a second to import

    return run_chat(ChatOptions(args.base_url, args.api_key, args.model, args.max_tokens,
                                _system_prompt(args), args.temperature))


def _system_prompt(args: argparse.Namespace) -> str | None:
    if args.system_file is None:
        return args.system
    try:
        return args.system_file.read_text()
    except OSError as err:
        raise SystemExit(f"preheat chat: --system-file: {err}") from None
