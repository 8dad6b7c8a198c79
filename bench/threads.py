"""Message threads through the HTTP API and the SDK: a 20-turn conversation threaded
(``client.beta.messages.thread``) and unthreaded (the client re-sends the history).

Prints per turn the TTFT, the request body's size and the share of the history (the
prompt before the new turn) the engine found in its KV cache (``/health``'s
``prompt_tokens_cached``), and how often re-tokenizing a reply's text gives other
tokens than the model generated (what threads avoid). Goals: turn 20's TTFT at most
1.2x turn 2's; a continue's body holds the new turn only.

    python bench/threads.py [--turns 20] [--base-url URL --api-key KEY]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from dataclasses import dataclass

import anthropic
import httpx
from api_cache import MODEL, add_server_options, on_server
from api_peer import cpu_model

SYSTEM = "You are a helpful assistant. Answer in one or two sentences."
GOAL = 1.2


@dataclass
class Turn:
    ttft: float
    body_bytes: int
    history_tokens: int  # prompt tokens before this turn's new message
    cached: int  # prompt tokens found in the KV cache
    reply_retokenizes: bool  # the reply's text tokenizes to the tokens generated


class BodySizes:
    """Sizes of the JSON bodies a client sends to /v1/messages."""

    def __init__(self):
        self.sizes: list[int] = []

    def __call__(self, request) -> None:
        if request.url.path.endswith("/v1/messages"):
            self.sizes.append(len(request.content))


def cache_counters(base_url: str) -> tuple[int, int]:
    health = httpx.get(f"{base_url}/health", timeout=30).json()
    return health["prompt_tokens"], health["prompt_tokens_cached"]


def question(turn: int, nonce: str) -> str:
    return f"Question {turn} ({nonce}): tell me one fact about the number {turn}."


def converse(base_url: str, api_key: str, turns: int, threaded: bool) -> list[Turn]:
    sizes = BodySizes()
    client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=600,
                                 http_client=anthropic.DefaultHttpxClient(
                                     event_hooks={"request": [sizes]}))
    nonce = uuid.uuid4().hex
    thread = client.beta.messages.thread(model=MODEL, max_tokens=48, system=SYSTEM,
                                         cache_control={"type": "ephemeral"})
    history: list[dict] = []
    out: list[Turn] = []
    previous_prompt = 0
    for turn in range(1, turns + 1):
        message = {"role": "user", "content": question(turn, nonce)}
        before = cache_counters(base_url)
        start, first = time.perf_counter(), None
        if threaded:
            stream = thread.stream(message, extra_body={"temperature": 0})
        else:
            history.append(message)
            stream = client.messages.stream(model=MODEL, max_tokens=48, system=SYSTEM,
                                            messages=history, extra_body={"temperature": 0},
                                            cache_control={"type": "ephemeral"})
        with stream as events:
            for _ in events.text_stream:
                first = first or time.perf_counter() - start
            final = events.get_final_message()
        if not threaded:
            history.append({"role": "assistant", "content": final.content})
        after = cache_counters(base_url)
        prompt = after[0] - before[0]
        text = "".join(b.text for b in final.content if b.type == "text")
        out.append(Turn(first or time.perf_counter() - start, sizes.sizes[-1],
                        previous_prompt, after[1] - before[1],
                        final.usage.output_tokens == count_tokens(client, text)))
        previous_prompt = prompt + final.usage.output_tokens
    return out


def count_tokens(client: anthropic.Anthropic, text: str) -> int:
    """Tokens of ``text`` alone: the count of a one-message prompt minus an empty one's."""
    def count(content: str) -> int:
        return client.messages.count_tokens(model=MODEL, messages=[
            {"role": "user", "content": content}]).input_tokens
    return count("x" + text) - count("x") + 1 if text else 0


def report(name: str, turns: list[Turn]) -> None:
    print(f"{name}:")
    for i, t in enumerate(turns, start=1):
        share = t.cached / t.history_tokens if t.history_tokens else 0.0
        print(f"  turn {i:2d}: TTFT {t.ttft * 1000:6.0f} ms, body {t.body_bytes:6d} B, "
              f"history {t.history_tokens:5d} tokens, {share:6.1%} of it cached")
    later = [t for t in turns[1:] if t.history_tokens]
    shares = [t.cached / t.history_tokens for t in later]
    ratio = turns[-1].ttft / turns[1].ttft
    print(f"  turn {len(turns)} TTFT / turn 2 TTFT: {ratio:.2f}x (goal <= {GOAL}x: "
          f"{'met' if ratio <= GOAL else 'NOT met'}); history cached, turns 2-{len(turns)}: "
          f"median {statistics.median(shares):.1%}, lowest {min(shares):.1%}")


def run(base_url: str, api_key: str, turns: int) -> None:
    print(f"{cpu_model()}; {turns} turns, greedy, 48-token replies")
    threaded = converse(base_url, api_key, turns, threaded=True)
    report("threaded (client.beta.messages.thread)", threaded)
    plain = converse(base_url, api_key, turns, threaded=False)
    report("unthreaded (the client re-sends the history, top-level cache_control)", plain)
    differ = sum(not t.reply_retokenizes for t in plain)
    print(f"replies whose text re-tokenizes to a different token count: {differ} of {len(plain)}")
    print(json.dumps({"threaded_bodies": [t.body_bytes for t in threaded],
                      "unthreaded_bodies": [t.body_bytes for t in plain]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=20)
    add_server_options(parser)
    args = parser.parse_args()
    on_server(args, lambda base_url, api_key: run(base_url, api_key, args.turns))

if __name__ == "__main__":
    main()
