"""The experiments of ``preheat bench``, each a few real requests through the SDK.

Every prompt starts with a fresh nonce, so no request finds another's prefix in the
server's cache unless the experiment means it to. Replies are greedy (temperature 0).
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anthropic

from preheat.client.bench.document import fit_document
from preheat.client.bench.options import BenchOptions
from preheat.client.cache_breakpoints import text_block, with_breakpoints
from preheat.client.timed_reply import TimedReply, create_timed, stream_timed
from preheat.client.token_usage import TokenUsage

DOCUMENT_QUESTIONS = ["Who may copy and share this program?",
                      "What does the license say about source code?"]
CONVERSATION = ["What is this document about?", "Who publishes it?",
                "Can I sell copies of the program?", "What happens if I break its terms?"]
STORY = "Tell me a story about a lighthouse keeper."
BATCH_POLL_SECONDS = 0.25
# Room the conversation needs beside the document: per turn a question and its template
# (~48 tokens) and a reply; the nonce and the document's heading besides.
TURN_TOKENS = 48
MARGIN_TOKENS = 64


@dataclass
class LongDocument:
    document_tokens: int
    uncached: list[TimedReply]  # each question with a document of its own: no cache helps
    cached: list[TimedReply]  # one cached document: the first writes it, the second reads


@dataclass
class StreamingComparison:
    streaming: TimedReply
    non_streaming: TimedReply


@dataclass
class UsersRun:
    started: float
    wall_s: float
    replies: list[TimedReply]  # in user order


@dataclass
class Users:
    sequential: UsersRun
    concurrent: UsersRun


@dataclass
class BatchSide:
    wall_s: float
    usages: list[TokenUsage]  # of the replies, in question order
    errored: int = 0  # batch items that ended in an error


@dataclass
class BatchComparison:
    one_by_one: BatchSide  # each question a /v1/messages request, one after another
    batch: BatchSide | None  # all of them as one Message Batch (None: no batch API)


@dataclass
class BenchResults:
    context_window: int | None
    long_document: LongDocument
    conversation: list[TimedReply]
    streaming: StreamingComparison
    users: Users
    batch: BatchComparison


def requests_needed(options: BenchOptions) -> int:
    """How many replies a run waits for (for its progress bar)."""
    warm_up, streamed_and_not = 1, 2
    return (warm_up + 2 * len(DOCUMENT_QUESTIONS) + len(CONVERSATION) + streamed_and_not
            + 2 * options.users + 2 * options.batch_items)


@dataclass
class Bench:
    """Sends the experiments' requests; ``done`` is called after each reply."""

    client: anthropic.Anthropic
    options: BenchOptions
    done: Callable[[], None]

    def ask(self, system: list[dict] | None, messages: list[dict],
            stream: bool = True) -> TimedReply:
        params = self.params(system, messages)
        params["extra_body"] = {"temperature": params.pop("temperature")}  # no 2.x keyword
        if stream:
            reply = stream_timed(self.client, params, TimedReply())
        else:
            reply = create_timed(self.client, params)
        self.done()
        return reply

    def params(self, system: list[dict] | None, messages: list[dict]) -> dict[str, Any]:
        """A greedy request's body as the Messages API takes it."""
        body: dict[str, Any] = {"model": self.options.model, "messages": messages,
                                "max_tokens": self.options.max_tokens, "temperature": 0}
        if system:
            body["system"] = system
        return body

    def count_tokens(self, text: str) -> int:
        return self.client.messages.count_tokens(
            model=self.options.model, messages=[{"role": "user", "content": text}]).input_tokens

    def context_window(self) -> int | None:
        """The server's context window (preheat's ``/v1/models`` gives it)."""
        return self.client.models.retrieve(self.options.model).max_input_tokens


def nonce() -> str:
    return uuid.uuid4().hex


def document_budget(options: BenchOptions, context_window: int | None) -> int:
    """The document's length: what was asked for, at most what leaves room for the
    conversation in the context window."""
    if context_window is None:
        return options.doc_tokens or 4096
    room = context_window - len(CONVERSATION) * (TURN_TOKENS + options.max_tokens) - MARGIN_TOKENS
    if room < 1:
        raise SystemExit(f"preheat bench: a {context_window}-token context window leaves no "
                         f"room for a document beside {options.max_tokens}-token replies")
    return min(options.doc_tokens or room, room)


def load_document(bench: Bench, budget: int) -> tuple[str, int]:
    """The document cut to ``budget`` tokens, and its length in tokens."""
    text = fit_document(bench.options.document.read_text(), budget, bench.count_tokens)
    return text, bench.count_tokens(text)


def document_system(document: str, cached: bool, ttl: str) -> list[dict]:
    return [text_block(f"Document {nonce()}:\n{document}", cached, ttl)]


def warm_up(bench: Bench) -> None:
    """A short request first, so a fresh server's one-time costs (first calls into its
    kernels, first allocations) fall on no experiment."""
    bench.ask(None, [{"role": "user", "content": f"({nonce()}) Say hello."}])


def long_document(bench: Bench, document: str, tokens: int) -> LongDocument:
    """Two questions about the document, without caching and with it."""
    ttl = bench.options.cache_ttl
    uncached = [bench.ask(document_system(document, False, ttl),
                          [{"role": "user", "content": question}])
                for question in DOCUMENT_QUESTIONS]
    system = document_system(document, True, ttl)
    cached = [bench.ask(system, [{"role": "user", "content": question}])
              for question in DOCUMENT_QUESTIONS]
    return LongDocument(tokens, uncached, cached)


def conversation(bench: Bench, document: str) -> list[TimedReply]:
    """Four turns about the document, marked as ``preheat chat`` marks them."""
    system_text = f"Answer questions about this document {nonce()}:\n{document}"
    history: list[dict[str, str]] = []
    turns = []
    for question in CONVERSATION:
        history.append({"role": "user", "content": question})
        system, messages = with_breakpoints(system_text, history, bench.options.cache_ttl)
        turns.append(bench.ask(system, messages))
        history.append({"role": "assistant", "content": turns[-1].text.strip() or "..."})
    return turns


def streaming(bench: Bench) -> StreamingComparison:
    """The same request streamed and not: when the first text is seen, when all is."""
    def story() -> list[dict]:
        return [{"role": "user", "content": f"({nonce()}) {STORY}"}]
    return StreamingComparison(streaming=bench.ask(None, story()),
                               non_streaming=bench.ask(None, story(), stream=False))


def users(bench: Bench) -> Users:
    """``options.users`` users with a question each: one after another, then all at once."""
    return Users(sequential=_users_run(bench, concurrent=False),
                 concurrent=_users_run(bench, concurrent=True))


def _users_run(bench: Bench, concurrent: bool) -> UsersRun:
    questions = [[{"role": "user", "content": f"({nonce()}) User {i + 1} asks: {STORY}"}]
                 for i in range(bench.options.users)]
    started = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(len(questions)) as pool:
            replies = list(pool.map(lambda messages: bench.ask(None, messages), questions))
    else:
        replies = [bench.ask(None, messages) for messages in questions]
    return UsersRun(started, time.perf_counter() - started, replies)


def batch_questions(count: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Question {i + 1}: in one sentence, what does part "
                                         f"{i % 17 + 1} of this document say?"}]
            for i in range(count)]


def batch(bench: Bench, document: str) -> BatchComparison:
    """``options.batch_items`` questions about the cached document: one at a time through
    ``/v1/messages``, then all of them as one Message Batch. Each side has a document of
    its own (a fresh nonce), so neither reads what the other cached."""
    ttl = bench.options.cache_ttl
    questions = batch_questions(bench.options.batch_items)
    system = document_system(document, True, ttl)
    started = time.perf_counter()
    replies = [bench.ask(system, messages, stream=False) for messages in questions]
    one_by_one = BatchSide(time.perf_counter() - started,
                           [reply.usage for reply in replies if reply.usage is not None])
    return BatchComparison(one_by_one, _as_batch(bench, document_system(document, True, ttl),
                                                 questions))


def _as_batch(bench: Bench, system: list[dict],
              questions: list[list[dict]]) -> BatchSide | None:
    batches = bench.client.messages.batches
    started = time.perf_counter()
    try:
        created = batches.create(requests=[
            {"custom_id": f"q{i + 1}", "params": bench.params(system, messages)}
            for i, messages in enumerate(questions)])
    except anthropic.NotFoundError:
        for _ in questions:
            bench.done()
        return None  # a server without the Message Batches API
    reported = 0
    while True:
        current = batches.retrieve(created.id)
        counts = current.request_counts
        finished = len(questions) - counts.processing
        for _ in range(finished - reported):
            bench.done()
        reported = finished
        if current.processing_status == "ended":
            break
        time.sleep(BATCH_POLL_SECONDS)
    wall = time.perf_counter() - started
    results = {line.custom_id: line.result for line in batches.results(created.id)}
    usages = [TokenUsage.from_sdk(results[f"q{i + 1}"].message.usage)
              for i in range(len(questions)) if results[f"q{i + 1}"].type == "succeeded"]
    return BatchSide(wall, usages, errored=len(questions) - len(usages))
