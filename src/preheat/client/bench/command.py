"""``preheat bench``: the caching, streaming and concurrency experiments side by side,
against a running server or one it starts, with what each would cost."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from preheat.client.arguments import add_client_options
from preheat.client.bench.options import BenchOptions, BenchRun
from preheat.client.bench.pricing import DEFAULT_INPUT_PRICE, DEFAULT_OUTPUT_PRICE, PriceTable

DOCUMENT = Path("/usr/share/common-licenses/GPL-3")
QUICK = {"doc_tokens": 512, "users": 2, "max_tokens": 16, "batch_items": 4}
FULL = {"doc_tokens": None, "users": 4, "max_tokens": 128, "batch_items": 16}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _price(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"a price cannot be negative: {value}")
    return value


def add_bench_parser(commands) -> None:
    parser = commands.add_parser(
        "bench", help="measure caching, streaming and concurrency, and what they cost",
        description="Five experiments through the anthropic SDK: a long document asked "
                    "about without and with caching, a 4-turn conversation, streaming vs "
                    "non-streaming, sequential vs concurrent users, questions about the "
                    "document one by one vs as a Message Batch; and their cost at a price "
                    "table. Starts `preheat serve` on a free port unless given --base-url.")
    add_client_options(parser, None, "a running server (default: start `preheat serve` with "
                                     "the embedded model for the run)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run: {QUICK['doc_tokens']}-token document, "
                             f"{QUICK['users']} users, {QUICK['batch_items']} batch "
                             f"questions, {QUICK['max_tokens']}-token replies")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout (progress goes to stderr)")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="draw the figures into a PNG (needs matplotlib: preheat[plot])")
    parser.add_argument("--users", type=_positive, help=f"concurrent users (default: "
                        f"{FULL['users']}, --quick {QUICK['users']})")
    parser.add_argument("--batch-items", type=_positive, help="questions of the batch "
                        f"experiment (default: {FULL['batch_items']}, --quick "
                        f"{QUICK['batch_items']})")
    parser.add_argument("--max-tokens", type=_positive, help=f"tokens per reply (default: "
                        f"{FULL['max_tokens']}, --quick {QUICK['max_tokens']})")
    parser.add_argument("--doc-tokens", type=_positive, help="document length in tokens "
                        f"(default: what the context window allows, --quick {QUICK['doc_tokens']})")
    parser.add_argument("--document", type=Path, default=DOCUMENT,
                        help=f"the long document (default: {DOCUMENT})")
    parser.add_argument("--cache-ttl", choices=("5m", "1h"), default="5m",
                        help="TTL of the cache breakpoints, priced 1.25x (5m) or 2x (1h)")
    parser.add_argument("--price-input", type=_price, default=DEFAULT_INPUT_PRICE,
                        help=f"$ per million input tokens (default: {DEFAULT_INPUT_PRICE})")
    parser.add_argument("--price-output", type=_price, default=DEFAULT_OUTPUT_PRICE,
                        help=f"$ per million output tokens (default: {DEFAULT_OUTPUT_PRICE})")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="an extra `preheat serve` argument for the started server "
                             "(repeatable; use --serve-arg=--flag for a flag)")
    parser.set_defaults(func=bench, log_level="warning")


def bench(args: argparse.Namespace) -> int:
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("preheat bench: --plot needs matplotlib: pip install 'preheat[plot]'")
    if not args.document.is_file():
        raise SystemExit(f"preheat bench: --document: no such file: {args.document}")
    from preheat.client.bench.run import run_bench  # the SDK takes a second to import

    sizes = QUICK if args.quick else FULL
    options = BenchOptions(
        model=args.model, max_tokens=args.max_tokens or sizes["max_tokens"],
        users=args.users or sizes["users"],
        batch_items=args.batch_items or sizes["batch_items"], doc_tokens=args.doc_tokens or sizes["doc_tokens"],
        document=args.document, cache_ttl=args.cache_ttl, quick=args.quick)
    run = BenchRun(base_url=args.base_url, api_key=args.api_key, serve_args=args.serve_arg,
                   json=args.json, plot=args.plot,
                   prices=PriceTable(input_per_mtok=args.price_input,
                                     output_per_mtok=args.price_output))
    return run_bench(options, run)
