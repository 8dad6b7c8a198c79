"""Message threads through the HTTP API and the SDK: a 20-turn conversation threaded
(``client.beta.messages.thread``) and unthreaded (the client re-sends the history).

Prints per turn the TTFT, the request body's size and the share of the history the
engine found in its KV cache (``/health``'s ``prompt_tokens_cached``). The history is the
prompt before the new turn less the previous reply's last token: that token was sampled
and never run through the model, so no KV of it exists anywhere. Also prints how often re-tokenizing a reply's text gives other
tokens than the model generated (what threads avoid). Goals: turn 20's TTFT at most
1.2x turn 2's; a continue's body holds the new turn only.

    python bench/threads.py [--turns 20] [--repeats 3] [--think 0] [--modes threaded,unthreaded]
                            [--base-url URL --api-key KEY]
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
LABELS = {"threaded": "threaded (client.beta.messages.thread)",
          "unthreaded": "unthreaded (the client re-sends the history, top-level cache_control)"}


@dataclass
class Turn:
    ttft: float
    body_bytes: int
    history_tokens: int  # prompt tokens before this turn's new message whose KV can exist
    cached: int | None  # prompt tokens found in the KV cache (None: the server doesn't say)
    reply_retokenizes: bool | None  # the reply's text tokenizes to the tokens generated


class BodySizes:
    """Sizes of the JSON bodies a client sends to /v1/messages."""

    def __init__(self):
        self.sizes: list[int] = []

    def __call__(self, request) -> None:
        if request.url.path.endswith("/v1/messages"):
            self.sizes.append(len(request.content))


def cached_tokens(base_url: str) -> int | None:
    """preheat's count of prompt tokens found in its KV cache so far (None from a peer)."""
    return httpx.get(f"{base_url}/health", timeout=30).json().get("prompt_tokens_cached")


def question(turn: int, nonce: str) -> str:
    return f"Question {turn} ({nonce}): tell me one fact about the number {turn}."


def converse(base_url: str, api_key: str, turns: int, threaded: bool, think: float = 0.0) -> list[Turn]:
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
        time.sleep(think)  # the user reading and typing: background work (disk writes) runs then
        before = cached_tokens(base_url)
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
            # A blank reply (a random-weight model's, say) cannot be sent back as a turn.
            blank = not "".join(b.text for b in final.content if b.type == "text").strip()
            history.append({"role": "assistant", "content": "..." if blank else final.content})
        after, usage = cached_tokens(base_url), final.usage
        prompt = (usage.input_tokens + (usage.cache_read_input_tokens or 0)
                  + (usage.cache_creation_input_tokens or 0))
        text = "".join(b.text for b in final.content if b.type == "text")
        out.append(Turn(first or time.perf_counter() - start, sizes.sizes[-1], previous_prompt,
                        None if after is None else after - before,
                        None if after is None else usage.output_tokens == count_tokens(client, text)))
        previous_prompt = prompt + usage.output_tokens - 1  # the last token never ran
    return out


def count_tokens(client: anthropic.Anthropic, text: str) -> int:
    """Tokens of ``text`` alone: the count of a one-message prompt minus an empty one's."""
    def count(content: str) -> int:
        return client.messages.count_tokens(model=MODEL, messages=[
            {"role": "user", "content": content}]).input_tokens
    return count("x" + text) - count("x") + 1 if text else 0


def report(name: str, runs: list[list[Turn]]) -> None:
    """Per turn: the median TTFT over the runs (each a fresh conversation), and the first
    run's body size and cached share."""
    print(f"{name}:")
    turns = runs[0]
    ttfts = [statistics.median(run[i].ttft for run in runs) for i in range(len(turns))]
    for i, (t, ttft) in enumerate(zip(turns, ttfts, strict=True), start=1):
        share = "" if t.cached is None or not t.history_tokens else \
            f", {t.cached / t.history_tokens:6.1%} of it cached"
        print(f"  turn {i:2d}: TTFT {ttft * 1000:6.0f} ms, body {t.body_bytes:6d} B, "
              f"history {t.history_tokens:5d} tokens{share}")
    ratio = ttfts[-1] / ttfts[1]
    each = ", ".join(f"{run[-1].ttft / run[1].ttft:.2f}x" for run in runs)
    print(f"  turn {len(turns)} TTFT / turn 2 TTFT: {ratio:.2f}x (goal <= {GOAL}x: "
          f"{'met' if ratio <= GOAL else 'NOT met'}; each run: {each})")
    shares = [t.cached / t.history_tokens for t in turns[1:] if t.history_tokens and t.cached is not None]
    if shares:
        print(f"  history cached, turns 2-{len(turns)}: median {statistics.median(shares):.1%}, "
              f"lowest {min(shares):.1%}")


def run(base_url: str, api_key: str, turns: int, repeats: int, modes: list[str], think: float) -> None:
    print(f"{cpu_model()}; {turns} turns, greedy, 48-token replies, {repeats} conversations each, "
          f"{think:g} s between turns")
    bodies = {}
    for mode in modes:
        runs = [converse(base_url, api_key, turns, mode == "threaded", think) for _ in range(repeats)]
        report(LABELS[mode], runs)
        bodies[f"{mode}_bodies"] = [t.body_bytes for t in runs[0]]
        checked = [t.reply_retokenizes for t in runs[0] if t.reply_retokenizes is not None]
        if mode == "unthreaded" and checked:
            print(f"replies whose text re-tokenizes to a different token count: "
                  f"{checked.count(False)} of {len(checked)}")
    print(json.dumps(bodies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="conversations per mode")
    parser.add_argument("--think", type=float, default=0.0,
                        help="seconds between a reply and the next turn (a user reading)")
    parser.add_argument("--modes", default="threaded,unthreaded",
                        help="comma list; a peer without threads (llama-server's /v1/messages) "
                             "takes --modes unthreaded")
    add_server_options(parser)
    args = parser.parse_args()
    on_server(args, lambda base_url, api_key: run(base_url, api_key, args.turns, args.repeats,
                                                          args.modes.split(","), args.think))

if __name__ == "__main__":
    main()
