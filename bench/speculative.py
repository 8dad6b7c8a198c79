"""Speculative decoding on the embedded model: preheat with and without it, and llama.cpp's
``llama-server`` with and without ``--spec-type ngram-simple``, through HTTP.

The goals (issue 24), single stream unless named, greedy, the same GGUF and threads:
- rewrite (a ~300-line Python file in the prompt, "return it with `X` renamed to `Y`,
  nothing else", up to ~2k output tokens): tok/s >= 2.0x preheat without speculation and
  >= 1.3x llama-server with ngram-simple;
- the same tenant's second similar request (the same file, another rename), which drafts
  from the first reply: >= 1.2x the first (also shown: the first request sent again);
- free text ("write a story"): >= 0.95x without speculation; 8 concurrent users: aggregate
  >= 0.95x without.

Decode tok/s is (output tokens - 1) / (last delta - first delta) of one streamed request;
the 8 users' figure is all their tokens over the time from the first request sent to the
last token. The free-text workloads run ``--repeats`` times on new stories each time, and
on the speculating preheat each run is sent first with ``"speculative": false`` (the
per-request opt-out), so the two are also compared on one server; medians are reported. preheat's acceptance rate and mean accepted draft length per workload come from
its ``/metrics`` counters before and after. Each server is started fresh, one at a time.

    .venv/bin/python bench/speculative.py [--threads 2] [--llama-server PATH]
        [--rewrite-tokens 2048] [--repeats 5] [--only preheat|llama]

Figures, not tests: read them as ratios, on the CPU named in the output.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_peer import body, cpu_model, nonce, preheat_command, server, stream  # noqa: E402

from preheat.client.bench.server_process import free_port  # noqa: E402
from preheat.loader.embedded import embedded_model_path  # noqa: E402

SOURCE = Path("/usr/lib/python3.11/copy.py")  # 304 lines
RENAMES = [("deepcopy", "deep_copy"), ("_reconstruct", "_rebuild")]
SUBJECTS = ["a lighthouse keeper", "a robot", "a dragon", "a clockmaker", "a detective",
            "a gardener", "a sailor", "a librarian", "a baker", "an astronaut", "a painter",
            "a shepherd", "a violinist", "a miner", "a beekeeper", "a cartographer"]
FINDS = ["a map in a bottle", "a door in a hill", "a letter from the future",
         "a talking crow", "a frozen river", "a hidden city"]


def stories(n: int, first: int) -> list[str]:
    """``n`` story prompts, each different from the others for ``first`` .. ``first + n``."""
    return [f"Write a long story about {SUBJECTS[i % len(SUBJECTS)]} who finds "
            f"{FINDS[i // len(SUBJECTS) % len(FINDS)]}." for i in range(first, first + n)]


SPEC_COUNTERS = ("preheat_spec_draft_tokens_total", "preheat_spec_accepted_tokens_total",
                 "preheat_spec_verify_steps_total")


@dataclass
class Workload:
    name: str
    tok_s: float
    tokens: int
    drafted: int = 0
    accepted: int = 0
    verify_steps: int = 0

    def acceptance(self) -> str:
        if not self.drafted:
            return "-"
        return (f"{self.accepted / self.drafted:.0%} of {self.drafted} drafted, "
                f"{self.accepted / self.verify_steps:.2f} accepted per verify")


@dataclass
class Side:
    name: str
    command: list[str]
    opt_out: bool = False  # a preheat server with speculation: requests may opt out
    results: dict[str, Workload] = field(default_factory=dict)


def rewrite_body(old: str, new: str, max_tokens: int) -> dict:
    """The reply opens with the file's first line (a prefill): asked alone, the 135M model
    writes prose about the file instead of returning it."""
    source = SOURCE.read_text()
    question = (f"Return this file with the function `{old}` renamed to `{new}` everywhere. "
                f"Write the whole file and nothing else.\n\n```python\n{source}```")
    request = body("You are a careful programmer.", question, max_tokens)
    request["messages"].append({"role": "assistant",
                                "content": "```python\n" + source.splitlines()[0]})
    return request


async def counters(client: httpx.AsyncClient) -> dict[str, float]:
    resp = await client.get("/metrics")
    if resp.status_code != 200:
        return {}
    found = {}
    for name in SPEC_COUNTERS:
        m = re.search(rf"^{name} ([0-9.e+]+)$", resp.text, re.M)
        found[name] = float(m.group(1)) if m else 0.0
    return found


async def rate_of(client: httpx.AsyncClient, requests: list[dict]) -> tuple[float, int]:
    """(tok/s, output tokens) of ``requests`` sent at once."""
    start = time.perf_counter()
    results = await asyncio.gather(*(stream(client, r) for r in requests))
    tokens = sum(r.output_tokens for r in results)
    if len(results) == 1:
        r = results[0]
        return (r.output_tokens - 1) / (r.last - r.ttft) if r.last > r.ttft else float("nan"), tokens
    return tokens / (max(r.sent + r.last for r in results) - start), tokens


async def counted(client: httpx.AsyncClient, requests: list[dict]) -> tuple[float, int, list[int]]:
    """``rate_of(requests)``, and how much the server's draft counters grew meanwhile."""
    before = await counters(client)
    rate, tokens = await rate_of(client, requests)
    after = await counters(client)
    return rate, tokens, [int(after.get(k, 0) - before.get(k, 0)) for k in SPEC_COUNTERS]


async def measured(client: httpx.AsyncClient, side: Side, name: str, requests: list[dict]) -> None:
    rate, tokens, delta = await counted(client, requests)
    side.results[name] = Workload(name, rate, tokens, *delta)
    print(f"  {side.name}: {name}: {rate:.1f} tok/s, {tokens} tokens; "
          f"{side.results[name].acceptance()}", flush=True)


async def free_text(client: httpx.AsyncClient, side: Side, args: argparse.Namespace,
                    users: int, name: str) -> None:
    """``--repeats`` runs of ``users`` new stories at once, each run first with speculation
    off for the requests (on a preheat server that has it), then as the server serves them:
    the medians of both, from one server, so that a server's start does not weigh in."""
    plain, served = [], []
    counts = [0, 0, 0]
    for run in range(args.repeats):
        prompts = stories(users, run * users + (0 if users == 1 else 100))
        tokens = args.story_tokens // (2 if users > 1 else 1)
        if side.opt_out:
            requests = [{**body(nonce(), p, tokens), "speculative": False} for p in prompts]
            plain.append((await rate_of(client, requests))[0])
        rate, _, delta = await counted(client, [body(nonce(), p, tokens) for p in prompts])
        served.append(rate)
        counts = [c + d for c, d in zip(counts, delta)]
    side.results[name] = Workload(name, statistics.median(served), 0, *counts)
    line = f"  {side.name}: {name}: {statistics.median(served):.1f} tok/s"
    if plain:
        side.results[name + ", opted out"] = Workload(name + ", opted out", statistics.median(plain), 0)
        line += f" ({statistics.median(plain):.1f} opted out)"
    print(line + f"; {side.results[name].acceptance()}", flush=True)


async def workloads(base_url: str, side: Side, args: argparse.Namespace) -> None:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(3600, connect=30),
                                 limits=limits) as client:
        await stream(client, body(nonce(), "Hi.", 1))  # first-request costs
        for i, (old, new) in enumerate(RENAMES):
            await measured(client, side, f"rewrite {i + 1}",
                           [rewrite_body(old, new, args.rewrite_tokens)])
        # a retry of the first (an agent's regenerate): its reply is what the tenant got before
        await measured(client, side, "rewrite 1 again",
                       [rewrite_body(*RENAMES[0], args.rewrite_tokens)])
        await free_text(client, side, args, 1, "free text")
        await free_text(client, side, args, 8, "8 users, free text")


def run_side(name: str, command: list[str], port: int, args: argparse.Namespace,
             opt_out: bool = False) -> Side:
    side = Side(name, command, opt_out)
    with server(name.replace(" ", "_"), command, port) as base_url:
        asyncio.run(workloads(base_url, side, args))
    return side


def llama(binary: str, port: int, threads: int, spec: str | None) -> list[str]:
    command = [binary, "-m", str(embedded_model_path()), "-t", str(threads), "-c", "65536",
               "-np", "8", "--host", "127.0.0.1", "--port", str(port)]
    return command + (["--spec-type", spec] if spec else [])


def ratio(a: Side | None, b: Side | None, workload: str) -> str:
    if a is None or b is None or workload not in a.results or workload not in b.results:
        return "n/a"
    return f"{a.results[workload].tok_s / b.results[workload].tok_s:.2f}x"


def report(sides: dict[str, Side], args: argparse.Namespace) -> None:
    names = list(sides)
    print(f"\nCPU: {cpu_model()}, {args.threads} threads, greedy, the embedded model")
    print("| workload | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for workload in next(iter(sides.values())).results:
        cells = [f"{s.results[workload].tok_s:.1f}" if workload in s.results else "-"
                 for s in sides.values()]
        print(f"| {workload} (tok/s) | " + " | ".join(cells) + " |")
    spec, off = sides.get("preheat"), sides.get("preheat off")
    peer = sides.get("llama-server ngram-simple")
    print("\nGoals:")
    print(f"- rewrite: {ratio(spec, off, 'rewrite 1')} preheat without speculation (goal >= 2.0x), "
          f"{ratio(spec, peer, 'rewrite 1')} llama-server ngram-simple (goal >= 1.3x)")
    if spec is not None and "rewrite 2" in spec.results:
        r = {name: w.tok_s for name, w in spec.results.items()}
        print(f"- second similar request: {r['rewrite 2'] / r['rewrite 1']:.2f}x the first "
              f"(goal >= 1.2x); the first again: {r['rewrite 1 again'] / r['rewrite 1']:.2f}x")
    print(f"- free text: {ratio(spec, off, 'free text')} (goal >= 0.95x); 8 users: "
          f"{ratio(spec, off, '8 users, free text')} (goal >= 0.95x)")
    if spec is not None and "free text, opted out" in spec.results:
        r = {name: w.tok_s for name, w in spec.results.items()}
        print(f"  on one server, against its requests opted out: free text "
              f"{r['free text'] / r['free text, opted out']:.2f}x, 8 users "
              f"{r['8 users, free text'] / r['8 users, free text, opted out']:.2f}x")
    if spec is not None:
        print("\npreheat's drafts:")
        for w in spec.results.values():
            print(f"- {w.name}: {w.acceptance()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-server", default=shutil.which("llama-server"))
    parser.add_argument("--rewrite-tokens", type=int, default=2048)
    parser.add_argument("--story-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs of the free-text workloads (their median is reported)")
    parser.add_argument("--only", choices=["preheat", "llama"])
    args = parser.parse_args()
    sides: dict[str, Side] = {}
    if args.only != "llama":
        for name, mode in (("preheat off", "off"), ("preheat", "suffix")):
            port = free_port()
            sides[name] = run_side(name, preheat_command(port, args.threads,
                                                         ["--speculative", mode]), port, args,
                                   opt_out=mode != "off")
    if args.only != "preheat":
        if args.llama_server is None:
            print("llama-server not found (PATH or --llama-server): see bench/api_peer.py")
        else:
            for name, spec in (("llama-server", None), ("llama-server ngram-simple", "ngram-simple")):
                port = free_port()
                sides[name] = run_side(name, llama(args.llama_server, port, args.threads, spec),
                                       port, args)
    report(sides, args)


if __name__ == "__main__":
    main()
