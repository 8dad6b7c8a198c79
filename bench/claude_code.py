"""Claude Code's own session, prefilled once: preheat vs llama.cpp's ``llama-server``.

The goal (issue 21): Claude Code's first prompt (~20k tokens: its system prompt and 24
tools) is prefilled once, then every later turn reads >= 90% of its prompt from the cache,
and a later turn's time to first token is <= 10% of the first turn's.

1. Claude Code (``claude``, from npm) runs two turns of a session (``claude -p``, then
   ``claude -p --continue``) against a stub server here that records its requests and
   answers each with one short text reply. Nothing of its prompt is stored on disk. The
   second turn keeps the first one's tools and system prompt, as an interactive session
   does (a second process words two of them differently: see ``record_session``).
2. The embedded model's GGUF, with its context length set to 32768 (a copy; the weights
   are the same: its replies past 8k positions are poorer, its speed is what is measured),
   is served by ``preheat serve`` and by ``llama-server`` (``-t N -c 32768``, one slot, its
   prompt cache on), one after the other.
3. Each server gets the two recorded requests as Claude Code sent them (``stream: true``,
   ``max_tokens`` cut to 8, greedy), a fresh nonce at the start of each run's tools and
   system prompt so no earlier run's cache helps; llama-server gets the tools written into
   the system prompt (it drops them for this model's template otherwise). TTFT is the time
   to the first content delta; prompt and cached tokens come from each server's ``usage``.

    python bench/claude_code.py [--claude PATH] [--llama-server PATH] [--threads 2]

Without ``--claude`` it uses the copy the tests install (~/.cache/preheat-tests); without
``llama-server`` (PATH or the option) it measures preheat alone. Figures, not tests: read
them as ratios measured in the same run, on the CPU named in the output.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gguf
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_peer import cpu_model, preheat_command  # noqa: E402

from preheat.client.bench.server_process import free_port, running_server  # noqa: E402
from preheat.loader.embedded import embedded_model_path  # noqa: E402

CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.197"
CONTEXT = 32768
QUESTIONS = ["What color is the sky? One word.", "And at night? One word."]
REPLY_TEXT = "Blue."
MAX_TOKENS = 8


# ---- 1. Claude Code's requests, recorded by a stub ------------------------------------


def stub_reply(model: str) -> bytes:
    """A whole streamed reply of one text block, as the Messages API sends it."""
    usage = {"input_tokens": 1, "output_tokens": 1, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0}
    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": usage}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": REPLY_TEXT}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                              "stop_sequence": None},
                           "usage": {"output_tokens": 1}}),
        ("message_stop", {"type": "message_stop"})]
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                    for name, data in events)


@contextlib.contextmanager
def recording_stub() -> Iterator[tuple[str, list[dict]]]:
    """A server on a free port that records ``POST /v1/messages`` bodies."""
    recorded: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - the connectivity probe
            self.send_response(200)
            self.end_headers()

        do_GET = do_HEAD  # noqa: N815

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if self.path.startswith("/v1/messages/count_tokens"):
                answer, kind = json.dumps({"input_tokens": 1}).encode(), "application/json"
            else:
                recorded.append(body)
                answer, kind = stub_reply(body.get("model", "claude")), "text/event-stream"
            self.send_response(200)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    stub = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{stub.server_address[1]}", recorded
    finally:
        stub.shutdown()


def record_session(claude: Path) -> list[dict]:
    """The main requests of a two-turn Claude Code session (its largest ones: Claude Code
    may send small side requests too)."""
    with tempfile.TemporaryDirectory() as home, recording_stub() as (base_url, recorded):
        env = {**os.environ, "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": "bench",
               "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               "HOME": home}
        turns = []
        for i, question in enumerate(QUESTIONS):
            before = len(recorded)
            args = [str(claude), "-p", question] + (["--continue"] if i else [])
            subprocess.run(args, cwd=home, env=env, check=True, capture_output=True, timeout=300)
            turns.append(max(recorded[before:], key=lambda b: len(json.dumps(b))))
    # Within one interactive session Claude Code's tools and system prompt stay as they
    # were (that is what its breakpoints cache); a second `claude -p --continue` process
    # words a few of them differently (the model's context size, the Bash tool). A later
    # turn is the first one's tools and system with the later conversation.
    first = turns[0]
    return [first] + [{**turn, "tools": first["tools"], "system": first["system"]}
                      for turn in turns[1:]]


def for_replay(request: dict, session_nonce: str) -> dict:
    """A recorded request with a short greedy reply, and a nonce at the start of its tools
    and of its system prompt (servers put either first), so each run's prompt is new to
    every cache."""
    body = {**request, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    if body.get("tools"):
        first = dict(body["tools"][0])
        first["description"] = f"{session_nonce}\n{first.get('description', '')}"
        body["tools"] = [first, *body["tools"][1:]]
    system = list(body.get("system") or [])
    for i, block in enumerate(system):
        if not block.get("text", "").startswith("x-anthropic-billing-header"):
            system[i] = {**block, "text": f"{session_nonce}\n{block['text']}"}
            body["system"] = system
            break
    return body


def tools_in_system(body: dict) -> dict:
    """``body`` with its tools written at the top of its system prompt, as preheat renders
    them: llama-server leaves out the tools of a model whose chat template takes none (it
    read 3k of the 20k-token prompt), which would time a different prompt."""
    if not body.get("tools"):
        return body
    lines = "\n".join(json.dumps({k: t.get(k) for k in ("name", "description", "input_schema")},
                                 ensure_ascii=False) for t in body["tools"])
    header = {"type": "text", "text": f"You can use the following tools:\n{lines}"}
    rest = {k: v for k, v in body.items() if k not in ("tools", "tool_choice")}
    return {**rest, "system": [header, *(body.get("system") or [])]}


# ---- 2. the model, with room for the prompt -------------------------------------------


def stretched_gguf(folder: Path) -> Path:
    """A copy of the embedded GGUF whose context length is ``CONTEXT``."""
    out = folder / "smollm2-135m-32k.gguf"
    shutil.copyfile(embedded_model_path(), out)
    reader = gguf.GGUFReader(out, "r+")
    reader.fields["llama.context_length"].parts[-1][0] = CONTEXT
    reader.data.flush()
    return out


# ---- 3. the replay ---------------------------------------------------------------------


@dataclass
class Turn:
    ttft: float
    prompt_tokens: int | None
    cached_tokens: int | None


async def replay(client: httpx.AsyncClient, body: dict) -> Turn:
    """One streamed request: time to its first content delta, and its prompt accounting."""
    sent = time.perf_counter()
    ttft, usage = None, {}
    async with client.stream("POST", "/v1/messages", json=body,
                             headers={"x-api-key": "bench",
                                      "anthropic-version": "2023-06-01"}) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:400]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = json.loads(line[5:])
            if data.get("type") == "message_start":
                usage = data["message"].get("usage", {})
            elif data.get("type") == "content_block_delta" and ttft is None:
                ttft = time.perf_counter() - sent
            elif data.get("type") == "message_delta":
                usage = {**usage, **{k: v for k, v in data.get("usage", {}).items()
                                     if isinstance(v, int) and v}}
            elif data.get("type") == "error":
                raise RuntimeError(f"SSE error: {data}")
    ttft = ttft if ttft is not None else time.perf_counter() - sent
    counts = [usage.get(k) for k in ("input_tokens", "cache_creation_input_tokens",
                                     "cache_read_input_tokens")]
    prompt = sum(c for c in counts if isinstance(c, int)) or None
    return Turn(ttft, prompt, usage.get("cache_read_input_tokens"))


async def session(base_url: str, requests: list[dict], shape) -> list[Turn]:
    nonce = f"[bench session {uuid.uuid4().hex}]"
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(1800, connect=30),
                                 limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return [await replay(client, shape(for_replay(r, nonce))) for r in requests]


def measure(name: str, command: list[str], port: int, requests: list[dict],
            shape=lambda body: body) -> list[Turn]:
    log = Path(tempfile.mkstemp(prefix=f"claude_code_{name}_", suffix=".log")[1])
    print(f"{name}: {' '.join(command)}\n  (its log: {log})", flush=True)
    with running_server(command, port, log) as base_url:
        asyncio.run(session(base_url, requests[:1], shape))  # first-request costs
        turns = asyncio.run(session(base_url, requests, shape))
    for i, turn in enumerate(turns, 1):
        print(f"  {name}: turn {i}: TTFT {turn.ttft:.3f} s, prompt {turn.prompt_tokens}, "
              f"read from cache {turn.cached_tokens}", flush=True)
    return turns


def report(results: dict[str, list[Turn]], threads: int) -> str:
    lines = [f"Claude Code session ({CLAUDE_CODE}), embedded model at {CONTEXT // 1024}k, "
             f"{threads} threads, {cpu_model()}",
             f"{'server':<14}{'turn 1 TTFT':>12}{'turn 2 TTFT':>12}{'turn 2 / 1':>11}"
             f"{'turn 2 cached':>15}"]
    for name, (first, second) in results.items():
        cached = (f"{second.cached_tokens / second.prompt_tokens:.0%}"
                  if second.cached_tokens and second.prompt_tokens else "n/a")
        lines.append(f"{name:<14}{first.ttft:>11.2f}s{second.ttft:>11.3f}s"
                     f"{second.ttft / first.ttft:>11.1%}{cached:>15}")
    if len(results) == 2:
        (_, (p1, p2)), (_, (l1, l2)) = results.items()
        lines.append(f"llama-server / preheat: turn 1 TTFT {l1.ttft / p1.ttft:.2f}x, "
                     f"turn 2 TTFT {l2.ttft / p2.ttft:.2f}x")
    return "\n".join(lines)


def default_claude() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "preheat-tests" / CLAUDE_CODE.replace("/", "+") / "node_modules" / ".bin" / "claude"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claude", type=Path, default=default_claude())
    parser.add_argument("--llama-server", default=shutil.which("llama-server"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.claude.exists():
        raise SystemExit(f"no Claude Code at {args.claude}: npm install --prefix DIR "
                         f"{CLAUDE_CODE}, then --claude DIR/node_modules/.bin/claude")
    requests = record_session(args.claude)
    print(f"recorded {len(requests)} turns of Claude Code "
          f"({len(requests[0].get('tools', []))} tools)", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        model = stretched_gguf(Path(folder))
        port = free_port()
        results = {"preheat": measure("preheat", preheat_command(port, args.threads, [
            "--model", str(model), "--kv-disk-dir", str(Path(folder) / "kv")]), port, requests)}
        if args.llama_server:
            port = free_port()
            results["llama-server"] = measure("llama-server", [
                args.llama_server, "-m", str(model), "-t", str(args.threads), "-c", str(CONTEXT),
                "-np", "1", "--host", "127.0.0.1", "--port", str(port)], port, requests,
                tools_in_system)
        else:
            print("llama-server not found (PATH or --llama-server): preheat alone; "
                  "bench/api_peer.py says how to build it")
    print()
    print(report(results, args.threads))


if __name__ == "__main__":
    main()
