"""Scale-out on Ray Serve (issue 25): engine replicas behind one endpoint, on one machine.

Throughput: servers started one at a time, each fresh, on the embedded model, each replica
warmed by a first request, then 16 concurrent users, distinct prompts, ``--max-tokens``
each: aggregate output tok/s (goal: ray x2 >= 1.7x ray x1):
  - ``direct``: ``preheat serve --num-threads 1`` (one engine, no Ray)
  - ``ray x1``: ``preheat serve --replicas 1 --num-threads 1``
  - ``ray x2``: ``preheat serve --replicas 2 --num-threads 1`` (one thread per replica)
  - ``direct x2``: two ``preheat serve --num-threads 1`` side by side, no Ray, half the
    users on each: the ceiling for ``ray x2`` on this machine (two engines, no hops)
  - ``llama-server -t 2 -np 16`` (the peer, both cores, when it is found)

Latency, with ``direct`` and ``ray x2`` both up and idle, the same requests sent to one
and then the other ``--repeats`` times (so the machine's noise falls on both alike): TTFT
p50 of a short prompt and of a cached ~3k-token prefix (goal: the router and Ray's hops
add <= 5 ms), and one stream's decode rate (the difference of the per-token times is what
each token pays for the hops: engine core -> replica -> ingress -> proxy).

Affinity (ray x2): four tenants (API keys) each pin a ~3k-token prefix, then ask
``--rounds`` more questions each: the share of those that read the whole prefix from the
cache (goal: 100%; a router that ignores prefixes sends a request to the replica holding
its prefix one time in N replicas).

    .venv/bin/python bench/scale_out.py [--users 16] [--max-tokens 128] [--repeats 10]
        [--rounds 5] [--only direct,ray1,ray2,pair,llama,latency]
        [--llama-server PATH]

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
from api_peer import (HEADERS, Figure, Side, body, concurrent_users, cpu_model,  # noqa: E402
                      document, llama_command, nonce, p50, preheat_command, server, stream)

from preheat.client.bench.server_process import free_port  # noqa: E402
from preheat.loader.embedded import embedded_model_path  # noqa: E402

PREFIX_TOKENS = 3000
TENANTS = ["tenant-1", "tenant-2", "tenant-3", "tenant-4"]


async def warm_up(client: httpx.AsyncClient, replicas: int) -> None:
    """A first request for every replica (concurrent ones spread over them)."""
    await asyncio.gather(*(stream(client, body(f"{nonce()} Hi.", "Hi.", 1))
                           for _ in range(2 * replicas)))


async def paired_latency(direct: httpx.AsyncClient, routed: httpx.AsyncClient,
                         sides: dict[str, Side], repeats: int, max_tokens: int) -> None:
    """The same requests to ``direct`` and ``routed`` in turn (both servers idle between
    them, so the machine's noise falls on both alike): TTFT of a small prompt, of a cached
    ~3k-token prefix, and one stream's decode rate."""
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in sides}
    text = await document(direct, PREFIX_TOKENS)
    systems = {name: f"{nonce()} Answer questions about this document.\n{text}"
               for name in sides}
    clients = {"direct": direct, "routed": routed}
    for name, client in clients.items():
        await stream(client, body(systems[name], "Who publishes it?", 1, cache=True))
    for i in range(repeats):
        for name, client in clients.items():
            small = await stream(client, body(f"{nonce()} Be brief.", f"Hi {i}.", 1))
            hit = await stream(client, body(systems[name], f"Question {i}: may I sell copies?",
                                            1, cache=True))
            samples[name].setdefault("small", []).append(small.ttft)
            samples[name].setdefault("hit", []).append(hit.ttft)
    for _ in range(3):
        for name, client in clients.items():
            # Without speculative decoding: its drafts from earlier replies would measure
            # which replica the last story was told on, not what the hops cost.
            reply = await stream(client, {**body(f"{nonce()} You are a storyteller.",
                                                 "Write a long story about a lighthouse keeper.",
                                                 max_tokens), "speculative": False})
            samples[name].setdefault("decode", []).append(1 / reply.gap)
    for name, side in sides.items():
        side.figures += [
            _figure("1 user: TTFT p50, short prompt", 1000 * p50(samples[name]["small"]), "ms"),
            _figure(f"1 user: TTFT p50, cached ~{PREFIX_TOKENS}-token prefix",
                    1000 * p50(samples[name]["hit"]), "ms"),
            _figure("1 user: decode", p50(samples[name]["decode"]), "tok/s",
                    f"median of 3, {max_tokens} tokens at most")]


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


def _figure(name: str, value: float, unit: str, detail: str = "") -> Figure:
    return Figure(name, value, unit, unit != "ms", detail)


def decision_cost(replicas: int = 100, tenants: int = 10_000, prefix_tokens: int = 3000,
                  trials: int = 2000) -> float:
    """Microseconds of one ``routing.choose`` over ``replicas`` replicas holding
    ``tenants`` tenants' prefixes between them (the router's own work per request)."""
    import random
    import timeit

    from preheat.scale.prefix_hashes import prefix_hashes
    from preheat.scale.routing import ReplicaView, choose
    rng = random.Random(0)
    names = [prefix_hashes([rng.randrange(49152) for _ in range(prefix_tokens)])
             for _ in range(50)]  # prefix shapes, reused with tenant-specific salts
    holds: list[dict[str, frozenset[int]]] = [{} for _ in range(replicas)]
    for t in range(tenants):
        holds[t % replicas][f"t{t}"] = frozenset(h ^ t for h in names[t % 50].values())
    views = [ReplicaView(f"r{i}", rng.randrange(8), holds[i]) for i in range(replicas)]
    asked = {length: h ^ 7 for length, h in names[7].items()}
    seconds = timeit.timeit(lambda: choose(views, "t7", asked), number=trials)
    return 1e6 * seconds / trials


def show(side: Side) -> None:
    for figure in side.figures:
        print(f"  {side.server}: {figure.name}: {figure.value:.4g} {figure.unit}"
              + (f" ({figure.detail})" if figure.detail else ""), flush=True)


def client_for(base_url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    return httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(1800, connect=30),
                             limits=limits)


async def throughput(base_url: str, side: Side, args: argparse.Namespace, replicas: int) -> None:
    async with client_for(base_url) as client:
        await warm_up(client, replicas)
        await concurrent_users(client, side, args.users, args.max_tokens)
    show(side)


async def split_throughput(base_urls: list[str], side: Side, args: argparse.Namespace) -> None:
    """``args.users`` users split evenly over independent servers: their aggregate tok/s."""
    clients = [client_for(url) for url in base_urls]
    try:
        await asyncio.gather(*(warm_up(client, 1) for client in clients))
        parts = [Side(f"{side.server} #{i}", side.command) for i in range(len(clients))]
        start = time.perf_counter()
        await asyncio.gather(*(concurrent_users(client, part, args.users // len(clients),
                                                args.max_tokens)
                               for client, part in zip(clients, parts, strict=True)))
        wall = time.perf_counter() - start
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    tokens = sum(r["output_tokens"] for part in parts for rs in part.requests.values() for r in rs)
    side.figures.append(Figure(f"{args.users} users: output tok/s", tokens / wall, "tok/s", True,
                               f"{tokens / args.users:.0f} tokens/request, "
                               f"{args.users // len(clients)} users a server"))
    show(side)


async def latency_and_affinity(direct_url: str, routed_url: str, sides: dict[str, Side],
                               args: argparse.Namespace) -> None:
    async with client_for(direct_url) as direct, client_for(routed_url) as routed:
        await warm_up(direct, 1)
        await warm_up(routed, 2)
        await paired_latency(direct, routed, sides, args.repeats, args.max_tokens)
        await affinity(routed, sides["routed"], args.rounds)
    for side in sides.values():
        show(side)


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
    parser.add_argument("--only", default="direct,ray1,ray2,llama,latency")
    parser.add_argument("--llama-server", default=shutil.which("llama-server"))
    args = parser.parse_args()
    only = set(args.only.split(","))
    print(f"CPU: {cpu_model()}; embedded model; {args.users} users x {args.max_tokens} "
          "tokens", flush=True)
    sides: dict[str, Side] = {}
    common = ["--kv-cache-tokens", "32768", "--min-cache-tokens", "1024"]
    servers = {"direct": ("direct (1 engine x 1 thread, no Ray)", [], 1),
               "ray1": ("ray x1 (1 replica x 1 thread)", ["--replicas", "1"], 1),
               "ray2": ("ray x2 (2 replicas x 1 thread)", ["--replicas", "2"], 2)}
    for key, (name, extra, replicas) in servers.items():
        if key in only:
            port = free_port()
            sides[key] = Side(name, preheat_command(port, 1, [*extra, *common]))
            with server(name, sides[key].command, port) as base_url:
                asyncio.run(throughput(base_url, sides[key], args, replicas))
    if "pair" in only:
        ports = [free_port(), free_port()]
        sides["pair"] = Side("direct x2 (2 servers x 1 thread, no Ray)",
                             preheat_command(ports[0], 1, common))
        with server("direct #0", sides["pair"].command, ports[0]) as first, \
                server("direct #1", preheat_command(ports[1], 1, common), ports[1]) as second:
            asyncio.run(split_throughput([first, second], sides["pair"], args))
    if "llama" in only and args.llama_server:
        port = free_port()
        command = llama_command(args.llama_server, embedded_model_path(), port, 2)
        command[command.index("-np") + 1] = str(args.users)
        sides["llama"] = Side("llama-server -t 2", command)
        with server("llama-server", command, port) as base_url:
            asyncio.run(throughput(base_url, sides["llama"], args, 1))
    paired: dict[str, Side] = {}
    if "latency" in only:  # both servers up, idle but for the request in flight
        direct_port, routed_port = free_port(), free_port()
        paired = {"direct": Side("direct", preheat_command(direct_port, 1, common)),
                  "routed": Side("ray x2", preheat_command(routed_port, 1,
                                                           ["--replicas", "2", *common]))}
        with server("direct", paired["direct"].command, direct_port) as direct_url, \
                server("ray x2", paired["routed"].command, routed_port) as routed_url:
            asyncio.run(latency_and_affinity(direct_url, routed_url, paired, args))
    summary(sides, paired, args)


def summary(sides: dict[str, Side], paired: dict[str, Side], args) -> None:
    users = f"{args.users} users: output tok/s"
    print("\nsummary (CPU: " + cpu_model() + ")")
    print(f"  {users}: ray x2 / ray x1 = "
          f"{ratio(value(sides.get('ray2'), users), value(sides.get('ray1'), users))} "
          f"(goal >= 1.7x); direct x2 / direct (no Ray: the ceiling) = "
          f"{ratio(value(sides.get('pair'), users), value(sides.get('direct'), users))}; "
          f"ray x1 / direct = "
          f"{ratio(value(sides.get('ray1'), users), value(sides.get('direct'), users))}; "
          f"ray x2 / llama-server -t 2 = "
          f"{ratio(value(sides.get('ray2'), users), value(sides.get('llama'), users))}")
    for figure in ("1 user: TTFT p50, short prompt", "1 user: TTFT p50, cached"):
        direct, routed = value(paired.get("direct"), figure), value(paired.get("routed"), figure)
        if direct and routed:
            print(f"  {figure}: ray x2 {routed:.1f} ms, direct {direct:.1f} ms: the router "
                  f"and Ray's hops add {routed - direct:+.1f} ms (goal <= 5 ms)")
    d, r = value(paired.get("direct"), "1 user: decode"), value(paired.get("routed"),
                                                                 "1 user: decode")
    if d and r:
        print(f"  one stream: direct {d:.1f} tok/s, ray x2 {r:.1f} tok/s: the hops cost "
              f"{1000 / r - 1000 / d:+.2f} ms a token")
    print(f"  routing.choose over 100 replicas holding 10,000 tenants' ~3k-token prefixes: "
          f"{decision_cost():.0f} us a request")
    hit = value(paired.get("routed"), "affinity")
    if hit is not None:
        print(f"  affinity: {hit:.0f}% of later requests read their tenant's prefix (goal "
              "100%; ignoring prefixes: about 50% with 2 replicas)")


if __name__ == "__main__":
    main()
