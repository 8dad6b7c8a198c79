"""API-level peer benchmark: preheat vs llama.cpp's ``llama-server``, raw HTTP + SSE.

Starts ``preheat serve`` (default settings) and ``llama-server`` (``-t N -c 65536 -np 8``,
its defaults otherwise: per-slot prompt cache on) on the same GGUF (the embedded model) and
thread count, one after the other (never both at once), each fresh, and runs the same
workload against both through ``POST /v1/messages`` with ``stream: true`` (llama-server has
an Anthropic endpoint too, so both get the identical body and chat template). The client
parses the SSE itself and timestamps every text delta; output tokens come from the final
``message_delta`` usage. Every prompt starts with a fresh nonce, so nothing is cached
unless the workload caches it on purpose. Each fresh server answers one tiny request first.

Workloads (temperature 0; neither server is told to ignore EOS, since preheat has no such
option: prompts ask for long answers and the actual tokens are counted):
  - 1/4/8/16 concurrent users, short distinct prompts, ~100 output tokens: aggregate output
    tok/s (tokens / time from first request sent to last token), inter-token gap p50, TTFT p50
  - decode speed after a ~1k/4k/7.6k-token system prompt (GPL-3 text), 1 user
  - a ~7.6k-token document: TTFT cold, then again with another question (warm: preheat
    via a ``cache_control`` breakpoint on the system block, llama-server via ``cache_prompt``)
  - 8 users sharing one cached ~2k-token system prompt (written by one warm-up request): TTFT p50

A delta may hold several tokens, so a request's inter-token gap is (last delta - first
delta) / (output_tokens - 1) and its decode tok/s the inverse.

    .venv/bin/python bench/api_peer.py [--threads 2] [--only preheat|llama] [--users 1,4,8,16]
        [--contexts 1000,4000,7600] [--llama-server PATH] [--json FILE] [--quick]

``--quick``: 1 and 4 users, 32 output tokens, a 1k context, a 2k document, 4 users on a
1.2k shared prompt (preheat caches prefixes of 1024+ tokens only). Each server's log is
kept in /tmp/api_peer_*.log. Without ``llama-server`` it prints how to build it (the
commands in BUILD_HINT) and measures preheat alone. Figures, not tests; on a shared
machine read them as ratios, measured in the same run.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from preheat.client.bench.server_process import free_port, running_server
from preheat.loader.embedded import embedded_model_path

ROOT = Path(__file__).resolve().parent.parent
GPL = Path("/usr/share/common-licenses/GPL-3")
MODEL = "claude-bench"  # preheat serves any claude-* id; llama-server ignores it
HEADERS = {"x-api-key": "bench", "anthropic-version": "2023-06-01"}
SYSTEM = "You are a helpful assistant. Answer at length, in detail, with examples."
TOPICS = ["the history of bridges", "how volcanoes form", "the life of honey bees",
          "how a bicycle works", "the water cycle", "the invention of printing",
          "why the sky is blue", "how trains changed cities", "the rules of chess",
          "how bread is made", "the planets of the solar system", "how vaccines work",
          "the history of the Olympic games", "how rivers shape valleys",
          "how computers store numbers", "the migration of birds"]
BUILD_HINT = """llama-server not found (PATH or --llama-server). Build it (a few minutes):
  pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36
  tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
  cmake -B build -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \\
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \\
    -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON
    # no AMX (see bench/engine.py); add -DGGML_AVX512_BF16=ON where the CPU has avx512_bf16
  cmake --build build -j2 --target llama-server
  ln -s "$PWD/build/bin/llama-server" /usr/local/bin/llama-server"""


@dataclass
class Request:
    """One streamed request, times in seconds from the moment it was sent."""

    sent: float = 0.0  # perf_counter() when sent
    ttft: float = 0.0
    last: float = 0.0
    output_tokens: int = 0
    deltas: int = 0
    stop_reason: str | None = None
    start_usage: dict = field(default_factory=dict)

    @property
    def gap(self) -> float | None:
        """Mean time between tokens after the first one."""
        if self.output_tokens < 2 or self.last <= self.ttft:
            return None
        return (self.last - self.ttft) / (self.output_tokens - 1)

    @property
    def prompt_tokens(self) -> int | None:
        """All prompt tokens, cached or not, as the server's ``message_start`` reports them."""
        keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        counts = [self.start_usage[k] for k in keys if isinstance(self.start_usage.get(k), int)]
        return sum(counts) if counts else None


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    higher_is_better: bool
    detail: str = ""


@dataclass
class Side:
    server: str
    command: list[str]
    figures: list[Figure] = field(default_factory=list)
    requests: dict[str, list[dict]] = field(default_factory=dict)


def raw(r: Request) -> dict:
    return {**asdict(r), "gap": r.gap, "prompt_tokens": r.prompt_tokens}


def nonce() -> str:
    return f"[session {uuid.uuid4().hex}]"


def body(system: str, question: str, max_tokens: int, cache: bool = False) -> dict:
    block = {"type": "text", "text": system}
    if cache:
        block["cache_control"] = {"type": "ephemeral"}
    return {"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "system": [block], "messages": [{"role": "user", "content": question}]}


async def stream(client: httpx.AsyncClient, request: dict, headers: dict = HEADERS) -> Request:
    """Send one streaming request; timestamp its text deltas as they arrive."""
    result, first = Request(), None
    sent = result.sent = time.perf_counter()
    async with client.stream("POST", "/v1/messages", json=request, headers=headers) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:500]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            now = time.perf_counter() - sent
            data = json.loads(line[5:])
            kind = data.get("type")
            if kind == "content_block_delta" and data["delta"].get("text"):
                first = now if first is None else first
                result.last, result.deltas = now, result.deltas + 1
            elif kind == "message_start":
                result.start_usage = data["message"].get("usage", {})
            elif kind == "message_delta":
                result.output_tokens = data["usage"]["output_tokens"]
                result.stop_reason = data["delta"].get("stop_reason")
            elif kind == "error":
                raise RuntimeError(f"SSE error: {data}")
    result.ttft = first if first is not None else time.perf_counter() - sent
    result.last = max(result.last, result.ttft)
    return result


_WORDS: dict[int, int] = {}  # target tokens -> GPL words, fitted once and reused by both servers


async def document(client: httpx.AsyncClient, tokens: int) -> str:
    """About ``tokens`` tokens of the GPL text (repeated if need be)."""
    words = GPL.read_text().split()
    while len(words) < 2 * tokens:
        words += words
    if tokens not in _WORDS:
        probe = {"model": MODEL, "system": " ".join(words[:tokens]),
                 "messages": [{"role": "user", "content": "?"}]}
        resp = await client.post("/v1/messages/count_tokens", json=probe, headers=HEADERS)
        resp.raise_for_status()
        _WORDS[tokens] = int(tokens * tokens / resp.json()["input_tokens"])
    return " ".join(words[:_WORDS[tokens]])


def p50(values: list[float | None]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


async def concurrent_users(client: httpx.AsyncClient, side: Side, users: int,
                           max_tokens: int) -> None:
    requests = [body(f"{nonce()} {SYSTEM}",
                     f"Write a long, detailed essay about {TOPICS[i % len(TOPICS)]}.", max_tokens)
                for i in range(users)]
    start = time.perf_counter()
    results = await asyncio.gather(*(stream(client, r) for r in requests))
    wall = max(r.sent + r.last for r in results) - start  # first request sent to last token
    tokens = sum(r.output_tokens for r in results)
    label = f"{users} user{'s' * (users > 1)}"
    detail = f"{tokens / users:.0f} tokens/request"
    side.figures += [
        Figure(f"{label}: output tok/s", tokens / wall, "tok/s", True, detail),
        Figure(f"{label}: inter-token gap p50", 1000 * p50([r.gap for r in results]), "ms", False),
        Figure(f"{label}: TTFT p50", p50([r.ttft for r in results]), "s", False)]
    side.requests[label] = [raw(r) for r in results]


async def decode_at_context(client: httpx.AsyncClient, side: Side, tokens: int,
                            max_tokens: int) -> None:
    text = await document(client, tokens)
    r = await stream(client, body(f"{nonce()}\n{text}",
                                  "Explain this license in detail, section by section.",
                                  max_tokens))
    rate = 1 / r.gap if r.gap else float("nan")
    side.figures.append(Figure(f"decode after ~{tokens} tokens", rate, "tok/s", True,
                               f"prompt {r.prompt_tokens} tokens, {r.output_tokens} out, "
                               f"cold TTFT {r.ttft:.2f} s"))
    side.requests[f"context {tokens}"] = [raw(r)]


async def long_document(client: httpx.AsyncClient, side: Side, tokens: int) -> None:
    system = f"{nonce()} Answer questions about this document.\n{await document(client, tokens)}"
    cold = await stream(client, body(system, "Who publishes this license?", 8, cache=True))
    warm = await stream(client, body(system, "Can I sell copies?", 8, cache=True))
    read = warm.start_usage.get("cache_read_input_tokens")
    side.figures += [
        Figure(f"~{tokens}-token document: TTFT cold", cold.ttft, "s", False),
        Figure(f"~{tokens}-token document: TTFT warm", warm.ttft, "s", False,
               f"{read} tokens read from cache" if read else "")]
    side.requests[f"document {tokens}"] = [raw(cold), raw(warm)]


async def shared_prompt(client: httpx.AsyncClient, side: Side, tokens: int, users: int) -> None:
    system = f"{nonce()} Answer questions about this document.\n{await document(client, tokens)}"
    await stream(client, body(system, "Hello.", 1, cache=True))  # writes the cache
    topics = ["copying", "source code", "patents", "warranty", "modification",
              "distribution", "termination", "fees"]
    results = await asyncio.gather(*(
        stream(client, body(system, f"What does it say about {topics[i % len(topics)]}? ({i})",
                            16, cache=True))
        for i in range(users)))
    side.figures.append(Figure(f"{users} users, shared cached ~{tokens}-token prompt: TTFT p50",
                               p50([r.ttft for r in results]), "s", False))
    side.requests[f"shared {tokens}"] = [raw(r) for r in results]


@contextlib.contextmanager
def server(name: str, command: list[str], port: int) -> Iterator[str]:
    """Start ``command`` (listening on ``port``), wait for ``/health``, stop it on exit."""
    log = Path(tempfile.mkstemp(prefix=f"api_peer_{name}_", suffix=".log")[1])
    print(f"{name}: {' '.join(command)}\n  (its log: {log})", flush=True)
    with running_server(command, port, log) as base_url:
        yield base_url


async def run_workloads(base_url: str, side: Side, args: argparse.Namespace) -> None:
    # a connection per request: llama-server closes idle keep-alive connections after 5 s
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(1800, connect=30),
                                 limits=limits) as client:
        await stream(client, body(f"{nonce()} {SYSTEM}", "Hi.", 1))  # first-request costs
        for users in args.users:
            await concurrent_users(client, side, users, args.max_tokens)
            print_progress(side, 3)
        for tokens in args.contexts:
            await decode_at_context(client, side, tokens, args.max_tokens)
            print_progress(side, 1)
        await long_document(client, side, args.doc_tokens)
        print_progress(side, 2)
        await shared_prompt(client, side, args.shared_tokens, args.shared_users)
        print_progress(side, 1)


def print_progress(side: Side, count: int) -> None:
    for f in side.figures[-count:]:
        print(f"  {side.server}: {f.name}: {f.value:.3g} {f.unit}"
              + (f" ({f.detail})" if f.detail else ""), flush=True)


def measure(name: str, command: list[str], port: int, args: argparse.Namespace) -> Side:
    side = Side(name, command)
    with server(name, command, port) as base_url:
        asyncio.run(run_workloads(base_url, side, args))
    return side


def preheat_command(port: int, threads: int | None, extra: list[str]) -> list[str]:
    exe = ROOT / ".venv" / "bin" / "preheat"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "preheat.cli"]
    if threads is not None:
        extra = ["--num-threads", str(threads), *extra]
    return [*base, "serve", "--port", str(port), "--log-level", "warning", *extra]


def llama_command(binary: str, gguf: Path, port: int, threads: int) -> list[str]:
    return [binary, "-m", str(gguf), "-t", str(threads), "-c", "65536", "-np", "8",
            "--host", "127.0.0.1", "--port", str(port)]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def table(sides: dict[str, Side]) -> str:
    names = list(dict.fromkeys(f.name for s in sides.values() for f in s.figures))
    rows = ["| figure | preheat | llama-server | ratio (preheat/llama-server) |",
            "|---|---|---|---|"]
    for name in names:
        got = {k: next((f for f in s.figures if f.name == name), None) for k, s in sides.items()}
        p, q = got.get("preheat"), got.get("llama-server")
        cell = lambda f: f"{f.value:.3g} {f.unit}" if f else "-"  # noqa: E731
        ratio = "-"
        if p and q and q.value and q.value == q.value and p.value == p.value:
            ratio = (f"{p.value / q.value:.2f}x "
                     f"({'higher' if p.higher_is_better else 'lower'} is better)")
        rows.append(f"| {name} | {cell(p)} | {cell(q)} | {ratio} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="threads (default 2; preheat gets --num-threads only if given)")
    parser.add_argument("--only", choices=["preheat", "llama"])
    parser.add_argument("--users", default="1,4,8,16")
    parser.add_argument("--contexts", default="1000,4000,7600")
    parser.add_argument("--llama-server", help="llama-server binary (default: from PATH)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--preheat-arg", action="append", default=[],
                        help="extra `preheat serve` argument (repeatable), e.g. --preheat-arg=--kv-dtype=float32")
    args = parser.parse_args()
    threads = args.threads or 2
    args.max_tokens, args.doc_tokens, args.shared_tokens, args.shared_users = 100, 7600, 2000, 8
    if args.quick:
        args.users, args.contexts, args.max_tokens = "1,4", "1000", 32
        args.doc_tokens, args.shared_tokens, args.shared_users = 2000, 1200, 4
    args.users = [int(u) for u in args.users.split(",")]
    args.contexts = [int(c) for c in args.contexts.split(",")]
    gguf = embedded_model_path()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores visible), threads: {threads}"
          f"{'' if args.threads else ' (preheat: its default)'}, model: {gguf.name}", flush=True)

    sides: dict[str, Side] = {}
    if args.only != "llama":
        port = free_port()
        sides["preheat"] = measure("preheat", preheat_command(port, args.threads, args.preheat_arg), port, args)
    if args.only != "preheat":
        binary = args.llama_server or shutil.which("llama-server")
        if binary is None:
            print(BUILD_HINT, flush=True)
        else:
            port = free_port()
            sides["llama-server"] = measure("llama-server",
                                            llama_command(binary, gguf, port, threads), port, args)
    print(f"\nCPU: {cpu_model()}, {threads} threads, {gguf.name}"
          f"{', quick run' if args.quick else ''}\n")
    print(table(sides))
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu_model(), "threads": threads, "model": str(gguf), "quick": args.quick,
            "sides": {k: asdict(s) for k, s in sides.items()}}, indent=1))
        print(f"\nraw figures written to {args.json}")


if __name__ == "__main__":
    main()
