"""The command-line options every client command takes: which server, which key, which
model id."""
from __future__ import annotations

import argparse
import os

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Any claude-* id is served by the loaded model; this one is current (the SDK warns about
# deprecated ids such as claude-opus-4-5 on every request).
DEFAULT_MODEL = "claude-sonnet-4-6"
DEFAULT_API_KEY = "preheat"  # a server without --api-key takes any key


def add_client_options(parser: argparse.ArgumentParser, base_url: str | None,
                       base_url_help: str) -> None:
    parser.add_argument("--base-url", default=base_url, help=base_url_help)
    parser.add_argument("--api-key", default=os.environ.get("ANTHROPIC_API_KEY", DEFAULT_API_KEY),
                        help=f'API key (default: $ANTHROPIC_API_KEY, else "{DEFAULT_API_KEY}")')
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model id to ask for (default: {DEFAULT_MODEL})")
