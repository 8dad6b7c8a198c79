"""Prompt caching end to end, through the HTTP API and the official SDK.

Measures (1) time to first token for a question about a ~4k-token document,
cold vs cached, and (2) the cached share of the prompt over a 4-turn
conversation that marks the system prompt and the last two user turns (the
classic multi-turn caching pattern). Goals: cached TTFT at most 10% of cold;
turns 2..4 at least 90% cached. Figures, not tests.

Starts ``preheat serve`` with default settings on a free port, unless given
``--base-url`` of a running server.

    python bench/api_cache.py [--doc-tokens 4000] [--rounds 3] [--base-url URL --api-key KEY]
"""
from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anthropic

from preheat.client.bench.server_process import preheat_server

DOCUMENT = Path("/usr/share/common-licenses/GPL-3")
MODEL = "claude-bench"  # any claude-* id is served by the loaded model
QUESTIONS = ["Who publishes this license?", "What does it say about source code?",
             "Can I sell copies?", "What happens if I break its terms?"]
TTFT_GOAL = 0.10
CACHED_GOAL = 0.90


def cached(text: str) -> dict:
    return {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}


def fit_document(client: anthropic.Anthropic, tokens: int) -> str:
    """A prefix of the GPL (repeated if need be) about ``tokens`` tokens long."""
    words = DOCUMENT.read_text().split()
    while len(words) < tokens:
        words += words
    count = client.messages.count_tokens(model=MODEL, messages=[
        {"role": "user", "content": " ".join(words)}]).input_tokens
    keep = int(len(words) * tokens / count)
    return " ".join(words[:keep])


def ttft(client: anthropic.Anthropic, system: list[dict],
         question: str) -> tuple[float, anthropic.types.Usage]:
    """Seconds from sending the request to the first text, and the request's usage."""
    start = time.perf_counter()
    first = None
    with client.messages.stream(model=MODEL, max_tokens=8, system=system,
                                messages=[{"role": "user", "content": question}],
                                extra_body={"temperature": 0}) as stream:
        for _ in stream.text_stream:
            first = first or time.perf_counter() - start
        usage = stream.get_final_message().usage
    return first or time.perf_counter() - start, usage


def bench_ttft(client: anthropic.Anthropic, document: str, rounds: int) -> tuple[float, float]:
    colds, warms = [], []
    for i in range(rounds):
        system = [cached(f"Document {uuid.uuid4().hex}:\n{document}")]  # a fresh prefix each round
        cold, cold_usage = ttft(client, system, QUESTIONS[0])
        warm, warm_usage = ttft(client, system, QUESTIONS[1])
        print(f"  round {i + 1}: cold {cold:.3f} s "
              f"({cold_usage.cache_creation_input_tokens} tokens written), "
              f"cached {warm:.3f} s ({warm_usage.cache_read_input_tokens} tokens read)")
        colds.append(cold)
        warms.append(warm)
    return statistics.median(colds), statistics.median(warms)


def bench_conversation(client: anthropic.Anthropic, document: str) -> list[float]:
    """Cached share of each turn's prompt; the system prompt and last two user turns are marked."""
    system = [cached(f"Answer questions about this document {uuid.uuid4().hex}:\n{document}")]
    history: list[dict] = []
    shares = []
    for turn, question in enumerate(QUESTIONS, start=1):
        history.append({"role": "user", "content": [{"type": "text", "text": question}]})
        user_turns = [m for m in history if m["role"] == "user"]
        messages = [_marked(m) if m in user_turns[-2:] else m for m in history]
        reply = client.messages.create(model=MODEL, max_tokens=32, system=system, messages=messages,
                                       extra_body={"temperature": 0})
        usage = reply.usage
        total = (usage.input_tokens + usage.cache_creation_input_tokens
                 + usage.cache_read_input_tokens)
        shares.append(usage.cache_read_input_tokens / total)
        print(f"  turn {turn}: {total} prompt tokens, {usage.cache_read_input_tokens} read, "
              f"{usage.cache_creation_input_tokens} written, {usage.input_tokens} uncached "
              f"-> {shares[-1]:.1%} cached")
        history.append({"role": "assistant", "content": reply.content[0].text.strip() or "..."})
    return shares


def _marked(message: dict) -> dict:
    blocks = [dict(block) for block in message["content"]]
    blocks[-1]["cache_control"] = {"type": "ephemeral"}
    return {"role": message["role"], "content": blocks}


def run(base_url: str, api_key: str, args: argparse.Namespace) -> None:
    client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
    document = fit_document(client, args.doc_tokens)
    print(f"TTFT for a question about a ~{args.doc_tokens}-token document ({args.rounds} rounds):")
    cold, warm = bench_ttft(client, document, args.rounds)
    ratio = warm / cold
    print(f"  median cold {cold:.3f} s, cached {warm:.3f} s: cached/cold = {ratio:.1%} "
          f"(goal <= {TTFT_GOAL:.0%}: {'met' if ratio <= TTFT_GOAL else 'NOT met'})")
    print("4-turn conversation (system prompt + last two user turns marked):")
    shares = bench_conversation(client, document)
    worst = min(shares[1:])
    print(f"  turns 2..4: lowest {worst:.1%} cached "
          f"(goal >= {CACHED_GOAL:.0%}: {'met' if worst >= CACHED_GOAL else 'NOT met'})")


def add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", help="a running server (default: start one)")
    parser.add_argument("--api-key", default="bench")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra `preheat serve` argument for the started server (repeatable)")


def on_server(args: argparse.Namespace, bench: Callable[[str, str], None]) -> None:
    """Run ``bench(base_url, api_key)`` on ``--base-url``, or on a server started for it."""
    if args.base_url:
        bench(args.base_url, args.api_key)
        return
    with preheat_server(args.serve_arg) as base_url:
        bench(base_url, args.api_key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--doc-tokens", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    add_server_options(parser)
    args = parser.parse_args()
    on_server(args, lambda base_url, api_key: run(base_url, api_key, args))


if __name__ == "__main__":
    main()
