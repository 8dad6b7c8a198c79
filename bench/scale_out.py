"""Scale-out on Ray Serve (issue 25): engine replicas behind one endpoint, on one machine.

Servers, started one at a time, each fresh, on the embedded model:
  - ``direct``: ``preheat serve --num-threads 1`` (one engine, no Ray)
  - ``ray x1``: ``preheat serve --replicas 1 --num-threads 1``
  - ``ray x2``: ``preheat serve --replicas 2 --num-threads 1`` (one thread per replica)
  - ``llama-server -t 2 -np 16`` (the peer, both cores, when it is found)

Workloads (greedy, streamed, raw HTTP + SSE):
  - 16 concurrent users, distinct prompts, ``--max-tokens`` each: aggregate output tok/s
    (goal: ray x2 >= 1.7x ray x1)
  - one user: decode tok/s of one reply, and TTFT p50 of ``--repeats`` requests reading a
    cached ~3k-token prefix (goal: the router adds <= 5 ms to it against ``direct``); the
    difference of the per-token times is each token's cost of the hops (engine core ->
    replica -> ingress -> proxy)
  - affinity (ray x2): four tenants (API keys) each pin a ~3k-token prefix, then ask
    ``--rounds`` more questions each: the share of those that read the whole prefix from
    the cache (goal: 100%; a router that ignores prefixes sends a request to the replica
    holding its prefix one time in N replicas)

    .venv/bin/python bench/scale_out.py [--users 16] [--max-tokens 128] [--repeats 10]
        [--rounds 5] [--only direct,ray1,ray2,llama] [--llama-server PATH]

Figures, not tests: read them as ratios, on the CPU named in the output.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_peer import (HEADERS, body, concurrent_users, cpu_model, document,  # noqa: E402
                      llama_command, nonce, p50, preheat_command, server, stream, Side)

from preheat.client.bench.server_process import free_port  # noqa: E402
from preheat.loader.embedded import embedded_model_path  # noqa: E402

PREFIX_TOKENS = 3000
TENANTS = ["tenant-1", "tenant-2", "tenant-3", "tenant-4"]


async def single_user(client: httpx.AsyncClient, side: Side, repeats: int,
                      max_tokens: int) -> None:
    reply = await stream(client, body(f"{nonce()} You are a storyteller.",
                                      "Write a long story about a lighthouse keeper.",
                                      max_tokens))
    system = f"{nonce()} Answer questions about this document.\n" \
             f"{await document(client, PREFIX_TOKENS)}"
    await stream(client, body(system, "Who publishes it?", 1, cache=True))  # writes it
    hits = [await stream(client, body(system, f"Question {i}: may I sell copies?", 1,
                                      cache=True)) for i in range(repeats)]
    side.figures.append(_figure("1 user: decode", 1 / reply.gap, "tok/s",
                                f"{reply.output_tokens} tokens"))
    side.figures.append(_figure(f"1 user: TTFT p50, cached ~{PREFIX_TOKENS}-token prefix",
                                1000 * p50([r.ttft for r in hits]), "ms",
                                f"{hits[0].start_usage.get('cache_read_input_tokens')} read"))


async def affinity(client: httpx.AsyncClient, side: Side, rounds: int) -> None:
    text = await document(client, PREFIX_TOKENS)
    prefixes = {t: f"{nonce()} Answer questions about this document.\n{text}" for t in TENANTS}
    homes, hits, total = {}, 0, 0
    for tenant in TENANTS:
        first = await _served(client, tenant, body(prefixes[tenant], "Hello.", 1, cache=True))
        homes[tenant] = first
    for i in range(rounds):
        for tenant in TENANTS:
            request = body(prefixes[tenant], f"Question {i}: may I sell copies?", 1, cache=True)
            reply = await stream(client, request, {**HEADERS, "x-api-key": tenant})
            total += 1
            hits += reply.start_usage.get("cache_read_input_tokens", 0) >= PREFIX_TOKENS * 0.9
    side.figures.append(_figure("affinity: later requests reading their tenant's prefix",
                                100 * hits / total, "%",
                                f"{hits}/{total}; tenants' replicas {sorted(homes.values())}"))


async def _served(client: httpx.AsyncClient, tenant: str, request: dict) -> str:
    response = await client.post("/v1/messages", json={**request, "stream": False},
                                 headers={**HEADERS, "x-api-key": tenant})
    response.raise_for_status()
    return response.headers.get("preheat-replica", "-")


def _figure(name, value, unit, detail=""):
    from api_peer import Figure
    return Figure(name, value, unit, unit != "ms", detail)


async def workloads(base_url: str, side: Side, args: argparse.Namespace, *, preheat: bool,
                    replicas: int) -> None:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(1800, connect=30),
                                 limits=limits) as client:
        await stream(client, body(f"{nonce()} Hi.", "Hi.", 1))  # first-request costs
        await concurrent_users(client, side, args.users, args.max_tokens)
        if preheat:
            await single_user(client, side, args.repeats, args.max_tokens)
        if replicas > 1:
            await affinity(client, side, args.rounds)
    for figure in side.figures:
        print(f"  {side.server}: {figure.name}: {figure.value:.4g} {figure.unit}"
              + (f" ({figure.detail})" if figure.detail else ""), flush=True)


def run(name: str, command: list[str], port: int, args, **kind) -> Side:
    side = Side(name, command)
    with server(name, command, port) as base_url:
        asyncio.run(workloads(base_url, side, args, **kind))
    return side


def value(side: Side | None, prefix: str) -> float | None:
    if side is None:
        return None
    return next((f.value for f in side.figures if f.name.startswith(prefix)), None)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="direct,ray1,ray2,llama")
    parser.add_argument("--llama-server", default=shutil.which("llama-server"))
    args = parser.parse_args()
    only = set(args.only.split(","))
    print(f"CPU: {cpu_model()}; embedded model; {args.users} users x {args.max_tokens} "
          "tokens", flush=True)
    sides: dict[str, Side] = {}
    common = ["--kv-cache-tokens", "32768", "--min-cache-tokens", "1024"]
    for key, name, extra, replicas in [
            ("direct", "direct (1 engine x 1 thread, no Ray)", [], 1),
            ("ray1", "ray x1 (1 replica x 1 thread)", ["--replicas", "1"], 1),
            ("ray2", "ray x2 (2 replicas x 1 thread)", ["--replicas", "2"], 2)]:
        if key in only:
            port = free_port()
            sides[key] = run(name, preheat_command(port, 1, [*extra, *common]), port, args,
                             preheat=True, replicas=replicas)
    if "llama" in only and args.llama_server:
        port = free_port()
        command = llama_command(args.llama_server, embedded_model_path(), port, 2)
        command[command.index("-np") + 1] = str(args.users)
        sides["llama"] = run("llama-server -t 2", command, port, args, preheat=False,
                             replicas=1)
    users = f"{args.users} users: output tok/s"
    print("\nsummary (CPU: " + cpu_model() + ")")
    print(f"  {users}: ray x2 / ray x1 = {ratio(value(sides.get('ray2'), users), value(sides.get('ray1'), users))}"
          f" (goal >= 1.7x); ray x2 / direct = "
          f"{ratio(value(sides.get('ray2'), users), value(sides.get('direct'), users))}; "
          f"ray x2 / llama-server -t 2 = "
          f"{ratio(value(sides.get('ray2'), users), value(sides.get('llama'), users))}")
    ttft = "1 user: TTFT p50"
    direct, routed = value(sides.get("direct"), ttft), value(sides.get("ray2"), ttft)
    if direct and routed:
        print(f"  TTFT p50 on a cached prefix: ray x2 {routed:.1f} ms, direct {direct:.1f} ms: "
              f"routing and hops add {routed - direct:+.1f} ms (goal <= 5 ms)")
    decode = "1 user: decode"
    d, r = value(sides.get("direct"), decode), value(sides.get("ray1"), decode)
    if d and r:
        print(f"  one stream: direct {d:.1f} tok/s, ray x1 {r:.1f} tok/s: the hops cost "
              f"{1000 / r - 1000 / d:+.2f} ms a token")
    hit = value(sides.get("ray2"), "affinity")
    if hit is not None:
        print(f"  affinity: {hit:.0f}% of later requests read their tenant's prefix (goal "
              "100%; ignoring prefixes: about 50% with 2 replicas)")


if __name__ == "__main__":
    main()
