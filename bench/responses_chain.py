"""A ten-turn Responses API conversation: ``previous_response_id`` on held KV vs resending it.

The goal (issue 22): turn 10 of a ``previous_response_id`` chain prefills only its new input
(``usage`` shows the rest as cached) and its time to first token is within 1.5x of turn 2's.

Each side runs the same conversation on the embedded model's GGUF: ``instructions`` of
about ``--document-tokens`` (a fresh nonce first, so no earlier run's cache helps), then ten
short questions, ``--max-output-tokens`` each, greedy, streamed (``/v1/responses``):

- ``preheat chain``: each turn sends only its question and the previous response's id;
- ``preheat resend``: each turn sends the whole conversation (instructions, every earlier
  question and reply), as a stateless client does;
- ``llama-server``: the same whole conversation to its ``/v1/responses`` (it refuses
  ``previous_response_id``), one slot (``-np 1``) with its prompt cache on.

TTFT is the time to the first ``response.output_text.delta``; prompt and cached tokens come
from each server's ``usage``.

    python bench/responses_chain.py [--llama-server PATH] [--threads 2]

Without ``llama-server`` (PATH or the option) it measures preheat alone. Figures, not
tests: read them as ratios measured in the same run, on the CPU named in the output.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_peer import cpu_model, preheat_command  # noqa: E402

from preheat.client.bench.server_process import free_port, running_server  # noqa: E402
from preheat.loader.embedded import embedded_model_path  # noqa: E402

GPL3 = Path("/usr/share/common-licenses/GPL-3")
QUESTIONS = [f"Question {i + 1}: in a few words, what does section {i + 1} say?"
             for i in range(10)]
MODEL = "claude-sonnet-4-6"  # preheat serves any claude-* id with its model; llama-server ignores it


@dataclass
class Turn:
    ttft: float
    prompt_tokens: int
    cached_tokens: int
    text: str
    response_id: str


def instructions(tokens: int) -> str:
    """About ``tokens`` tokens of the GPL (~0.75 words a token), behind a fresh nonce."""
    words = GPL3.read_text().split()[: int(tokens * 0.75)]
    return f"Reference {uuid.uuid4().hex}. Answer from this text.\n" + " ".join(words)


async def turn(client: httpx.AsyncClient, body: dict) -> Turn:
    """One streamed request; its TTFT and the usage of its final response."""
    start = time.perf_counter()
    ttft, response = None, None
    async with client.stream("POST", "/v1/responses", json=body) as reply:
        if reply.status_code != 200:
            raise SystemExit(f"{reply.status_code}: {(await reply.aread()).decode()[:500]}")
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line.removeprefix("data: "))
            if event["type"] == "response.output_text.delta" and ttft is None:
                ttft = time.perf_counter() - start
            if event["type"] in ("response.completed", "response.incomplete"):
                response = event["response"]
    if response is None or ttft is None:
        raise SystemExit(f"the stream ended without text or a final response: {response}")
    usage = response["usage"]
    text = "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"])
    return Turn(ttft, usage["input_tokens"],
                (usage.get("input_tokens_details") or {}).get("cached_tokens", 0), text,
                response["id"])


def message(role: str, part: str, text: str) -> dict:
    """A message item in its full form (llama-server reads no other for an assistant's)."""
    return {"type": "message", "role": role, "content": [{"type": part, "text": text}]}


async def conversation(base_url: str, chain: bool, args: argparse.Namespace) -> list[Turn]:
    system = instructions(args.document_tokens)
    history: list[dict] = []
    turns: list[Turn] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=600,
                                 headers={"authorization": "Bearer bench"}) as client:
        for question in QUESTIONS:
            asked = message("user", "input_text", question)
            body = {"model": MODEL, "instructions": system, "stream": True, "temperature": 0,
                    "max_output_tokens": args.max_output_tokens}
            if chain and turns:
                body |= {"input": [asked], "previous_response_id": turns[-1].response_id}
            else:
                body["input"] = [*history, asked]
            turns.append(await turn(client, body))
            history += [asked, message("assistant", "output_text", turns[-1].text)]
    return turns


def measure(name: str, command: list[str], port: int, chains: dict[str, bool],
            args: argparse.Namespace) -> dict[str, list[Turn]]:
    log = Path(tempfile.mkstemp(prefix=f"responses_{name}_", suffix=".log")[1])
    print(f"{name}: {' '.join(command)}\n  (its log: {log})", flush=True)
    out = {}
    with running_server(command, port, log) as base_url:
        asyncio.run(conversation(base_url, False, argparse.Namespace(
            document_tokens=64, max_output_tokens=4)))  # first-request costs
        for label, chain in chains.items():
            out[label] = asyncio.run(conversation(base_url, chain, args))
            for i, t in enumerate(out[label], 1):
                print(f"  {label}: turn {i:2}: TTFT {t.ttft:.3f} s, prompt {t.prompt_tokens}, "
                      f"cached {t.cached_tokens}, new {t.prompt_tokens - t.cached_tokens}",
                      flush=True)
    return out


def report(results: dict[str, list[Turn]], args: argparse.Namespace) -> str:
    lines = [f"Ten-turn Responses API conversation, embedded model, ~{args.document_tokens}-token "
             f"instructions, {args.max_output_tokens} output tokens a turn, {args.threads} "
             f"threads, {cpu_model()}",
             f"{'side':<16}{'turn 1':>9}{'turn 2':>9}{'turn 10':>9}{'10 / 2':>8}"
             f"{'turn 10 prompt':>16}{'cached':>8}{'new':>6}"]
    for name, turns in results.items():
        first, second, last = turns[0], turns[1], turns[-1]
        lines.append(f"{name:<16}{first.ttft:>8.3f}s{second.ttft:>8.3f}s{last.ttft:>8.3f}s"
                     f"{last.ttft / second.ttft:>7.2f}x{last.prompt_tokens:>16}"
                     f"{last.cached_tokens:>8}{last.prompt_tokens - last.cached_tokens:>6}")
    chain = results.get("preheat chain")
    for name, turns in results.items():
        if chain is not None and name != "preheat chain":
            lines.append(f"{name} / preheat chain, turn 10 TTFT: "
                         f"{turns[-1].ttft / chain[-1].ttft:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", default=shutil.which("llama-server"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--document-tokens", type=int, default=2000)
    parser.add_argument("--max-output-tokens", type=int, default=32)
    args = parser.parse_args()
    model = embedded_model_path()
    results: dict[str, list[Turn]] = {}
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        results |= measure("preheat", preheat_command(port, args.threads, [
            "--kv-disk-dir", str(Path(folder) / "kv"),
            "--responses-db", str(Path(folder) / "responses.sqlite3")]), port,
            {"preheat chain": True, "preheat resend": False}, args)
        if args.llama_server:
            port = free_port()
            results |= measure("llama-server", [
                args.llama_server, "-m", str(model), "-t", str(args.threads), "-c", "8192",
                "-np", "1", "--host", "127.0.0.1", "--port", str(port)], port,
                {"llama-server": False}, args)
        else:
            print("llama-server not found (PATH or --llama-server): preheat alone; "
                  "bench/api_peer.py says how to build it")
    print()
    print(report(results, args))


if __name__ == "__main__":
    main()
