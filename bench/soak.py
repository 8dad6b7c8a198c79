"""Soak and chaos: a mixed load against a real ``preheat serve`` with a small KV pool, every
response checked, the engine core killed once, and the server checked idle at the end.

The load, from ``--users`` concurrent users for ``--minutes``:
- questions on pinned documents (~2.8k tokens each, several per tenant, ``ttl: "1h"``):
  more than RAM holds, so they spill to the disk tier and are read back;
- ``max_tokens: 0`` pre-warms of those documents; multi-turn conversations whose breakpoint
  moves forward; forced and free tool calls; structured output; count_tokens; OpenAI
  chat completions; streams that the client cuts off after a few events.

Every response is checked: status, usage arithmetic (read + written + input equals
count_tokens of the same body, for a sample), a repeated question on a pinned document is
a hit, tool inputs and structured replies validate against their schemas, and tool turns
end with ``tool_use``. A sample of greedy replies is replayed alone at the end: the tokens
must be the same. Halfway (``--kill-at``) the engine core is killed: what users saw is
counted apart. At the end the server must be idle (nothing running or waiting, every
block either free or the cache's) and the API process's memory must not have grown:
after an idle pause its RSS is compared with the RSS after warm-up, and the growth over
the run's second half is given per minute (a leak grows steadily; an allocator keeps a
plateau).

    python bench/soak.py [--minutes 10] [--users 6] [--kill-at 0.5] [--serve-arg=...]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import httpx
import jsonschema
from api_peer import cpu_model

from preheat.client.bench.server_process import preheat_server

DOCUMENT = Path("/usr/share/common-licenses/GPL-3").read_text().split()
MODEL = "claude-soak"
TENANTS = [f"soak-tenant-{i}" for i in range(4)]
DOCS_PER_TENANT = 3
WEATHER = {"name": "get_weather", "description": "The current weather in a city",
           "input_schema": {"type": "object", "properties": {
               "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
               "required": ["city"]}}
ORDER = {"name": "place_order", "description": "Order an item",
         "input_schema": {"type": "object", "properties": {
             "item": {"type": "string"}, "quantity": {"type": "integer"}, "price": {"type": "number"}},
             "required": ["item", "quantity"]}}
CITY = {"type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"},
                                         "population": {"type": "integer"}},
        "required": ["name", "country", "population"]}
GREEDY = {"temperature": 0}


class StatusError(Exception):
    """An HTTP error status from a request the SDK did not send."""


@dataclass
class Outcome:
    scenario: str
    started: float
    seconds: float
    ok: bool
    problem: str = ""  # what was wrong (status, shape, arithmetic, schema)


@dataclass
class Soak:
    base_url: str
    deadline: float
    rng: random.Random
    outcomes: list[Outcome] = field(default_factory=list)
    # (tenant, doc) -> when a reply that pinned it was complete: a request sent later must hit
    written: dict[tuple[str, int], float] = field(default_factory=dict)
    # pinned before the kill: on disk (a hit after the restart) or still being written (lost)
    before_kill: set[tuple[str, int]] = field(default_factory=set)
    kill_survivors: Counter = field(default_factory=Counter)  # "read back" / "lost": first asks after it
    replays: list[tuple[str, dict, str]] = field(default_factory=list)  # (key, body, text) to redo alone
    kill_window: tuple[float, float] | None = None  # from the kill until /health is ok again

    def client(self, key: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.base_url, api_key=key, max_retries=0, timeout=300)


def document(tenant: str, doc: int) -> str:
    start = (doc * 700) % 3000
    return f"[{tenant} document {doc}]\n" + " ".join(DOCUMENT[start:start + 2000])


def usage_sum(usage) -> int:
    return usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens


# ---- scenarios: each sends one request (or a few) and raises AssertionError on a wrong answer ----


async def pinned_question(soak: Soak, key: str) -> None:
    doc = soak.rng.randrange(DOCS_PER_TENANT)
    body = {"model": MODEL, "max_tokens": 12, "system": [
        {"type": "text", "text": document(key, doc), "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": soak.rng.choice(
            ["Who may copy it?", "What is this about?", "Summarise it.", "Can I sell copies?"])}]}
    client, sent = soak.client(key), time.monotonic()
    if soak.rng.random() < 0.5:
        async with client.messages.stream(**body, extra_body=GREEDY) as stream:
            message = await stream.get_final_message()
    else:
        message = await client.messages.create(**body, extra_body=GREEDY)
        if soak.rng.random() < 0.3:
            soak.replays.append((key, body, message.content[0].text))
    await check_usage(soak, client, body, message.usage)
    hit = message.usage.cache_read_input_tokens > 0
    if (key, doc) in soak.before_kill:
        soak.before_kill.discard((key, doc))
        soak.kill_survivors["read back" if hit else "lost"] += 1
    elif soak.written.get((key, doc), sent) < sent:
        assert hit, f"a pinned document missed ({key}, {doc}): {message.usage}"
    soak.written.setdefault((key, doc), time.monotonic())


async def prewarm(soak: Soak, key: str) -> None:
    doc = soak.rng.randrange(DOCS_PER_TENANT)
    message = await soak.client(key).messages.create(
        model=MODEL, max_tokens=0, messages=[{"role": "user", "content": "."}], system=[
            {"type": "text", "text": document(key, doc), "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
    assert message.content == [] and message.usage.output_tokens == 0
    soak.written.setdefault((key, doc), time.monotonic())


async def conversation(soak: Soak, key: str) -> None:
    client, nonce = soak.client(key), uuid.uuid4().hex[:8]
    messages: list[dict] = []
    for turn in range(soak.rng.randint(2, 4)):
        for m in messages:  # the newest user turn alone carries the moving breakpoint
            if m["role"] == "user":
                m["content"] = [{"type": "text", "text": m["content"][0]["text"]}]
        start = soak.rng.randrange(4000)
        messages.append({"role": "user", "content": [{  # ~400 tokens: past --min-cache-tokens
            "type": "text", "text": f"({nonce}) About this, fact {turn}: " + " ".join(DOCUMENT[start:start + 300]),
            "cache_control": {"type": "ephemeral"}}]})
        message = await client.messages.create(model=MODEL, max_tokens=16, messages=messages, extra_body=GREEDY)
        if turn > 0:
            assert message.usage.cache_read_input_tokens > 0, f"turn {turn} read nothing: {message.usage}"
        messages.append({"role": "assistant", "content": message.content[0].text or "."})


async def tool_call(soak: Soak, key: str) -> None:
    tools = soak.rng.choice([[WEATHER], [ORDER], [WEATHER, ORDER]])
    choice = soak.rng.choice([{"type": "any"}, {"type": "auto"}, {"type": "tool", "name": tools[0]["name"]}])
    body = {"model": MODEL, "max_tokens": 300, "tools": tools, "tool_choice": choice, "messages": [
        {"role": "user", "content": soak.rng.choice(
            ["What's the weather in Paris?", "Order 3 apples at 0.5 each.", "Weather in Oslo, then buy pears."])}]}
    message = await soak.client(key).messages.create(**body, extra_body=GREEDY)
    calls = [b for b in message.content if b.type == "tool_use"]
    if choice["type"] != "auto":
        assert message.stop_reason == "tool_use" and calls, f"{message.stop_reason}, {len(calls)} calls"
    for block in calls:
        schema = next(t["input_schema"] for t in tools if t["name"] == block.name)
        jsonschema.validate(block.input, schema)
    seen = [(b.name, json.dumps(b.input, sort_keys=True)) for b in calls]
    assert len(set(seen)) == len(seen), f"a repeated call: {seen}"
    if soak.rng.random() < 0.3:
        soak.replays.append((key, body, str(seen)))


async def structured(soak: Soak, key: str) -> None:
    city = soak.rng.choice(["Paris", "Tokyo", "Lima", "Cairo"])
    message = await soak.client(key).messages.create(
        model=MODEL, max_tokens=200, messages=[{"role": "user", "content": f"Describe {city} as JSON."}],
        output_config={"format": {"type": "json_schema", "schema": CITY}}, extra_body=GREEDY)
    assert message.stop_reason == "end_turn", message.stop_reason
    jsonschema.validate(json.loads(message.content[0].text), CITY)


async def cut_stream(soak: Soak, key: str) -> None:
    async with soak.client(key).messages.stream(
            model=MODEL, max_tokens=400, messages=[{"role": "user", "content": "Tell me a long story."}],
            extra_body=GREEDY) as stream:
        seen = 0
        async for _ in stream:
            seen += 1
            if seen >= soak.rng.randint(2, 12):
                break  # the client hangs up: the server must free what the request held


async def count_tokens(soak: Soak, key: str) -> None:
    counted = await soak.client(key).messages.count_tokens(
        model=MODEL, tools=[WEATHER], messages=[{"role": "user", "content": "How many tokens is this?"}])
    assert counted.input_tokens > 0


async def openai_chat(soak: Soak, key: str) -> None:
    async with httpx.AsyncClient(base_url=soak.base_url, timeout=300) as http:
        reply = await http.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json={
            "model": MODEL, "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": "Name a planet."}]})
    if reply.status_code != 200:
        raise StatusError(f"{reply.status_code} (OpenAI) {reply.json()['error']['type']}")
    assert reply.json()["choices"][0]["message"]["content"] is not None


async def check_usage(soak: Soak, client: anthropic.AsyncAnthropic, body: dict, usage) -> None:
    if soak.rng.random() < 0.25:
        counted = await client.messages.count_tokens(
            **{k: v for k, v in body.items() if k not in ("max_tokens", "stream")})
        assert usage_sum(usage) == counted.input_tokens, f"usage {usage} vs count_tokens {counted.input_tokens}"


SCENARIOS = {pinned_question: 30, prewarm: 6, conversation: 10, tool_call: 12, structured: 8,
             cut_stream: 8, count_tokens: 6, openai_chat: 6}


# ---- the run ---------------------------------------------------------------------------------


async def user(soak: Soak) -> None:
    names, weights = list(SCENARIOS), list(SCENARIOS.values())
    while time.monotonic() < soak.deadline:
        scenario = soak.rng.choices(names, weights)[0]
        key = soak.rng.choice(TENANTS)
        start = time.monotonic()
        try:
            await scenario(soak, key)
            soak.outcomes.append(Outcome(scenario.__name__, start, time.monotonic() - start, True))
        except (AssertionError, jsonschema.ValidationError, ValueError) as err:
            soak.outcomes.append(Outcome(scenario.__name__, start, time.monotonic() - start, False,
                                         f"wrong answer: {str(err)[:160]}"))
        except anthropic.APIStatusError as err:
            what = err.body.get("error", {}).get("type") if isinstance(err.body, dict) else None
            soak.outcomes.append(Outcome(scenario.__name__, start, time.monotonic() - start, False,
                                         f"{err.status_code} {what or type(err).__name__}"))
        except StatusError as err:
            soak.outcomes.append(Outcome(scenario.__name__, start, time.monotonic() - start, False, str(err)))
        except (anthropic.APIError, httpx.HTTPError) as err:
            soak.outcomes.append(Outcome(scenario.__name__, start, time.monotonic() - start, False,
                                         f"{type(err).__name__}: {str(err)[:80]}"))


def engine_pid(server_pid: int) -> int | None:
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(server_pid)],
                         capture_output=True, text=True).stdout.splitlines()
    pids = [int(line.split()[0]) for line in out if "spawn_main" in line]
    return pids[0] if pids else None


def server_pid(port: int) -> int:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return next(int(line.split()[0]) for line in out.splitlines()
                if "preheat.cli serve" in line and f"--port {port} " in line)


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def chaos_and_watch(soak: Soak, api_pid: int, kill_at: float, samples: list) -> None:
    """Sample memory every 5 s; kill the engine core once at ``kill_at``; time its recovery."""
    start = time.monotonic()
    kill_time = start + kill_at * (soak.deadline - start) if kill_at > 0 else None
    async with httpx.AsyncClient(base_url=soak.base_url, timeout=30) as http:
        while time.monotonic() < soak.deadline:
            samples.append((time.monotonic() - start, rss_mb(api_pid), rss_mb(engine_pid(api_pid))))
            if kill_time is not None and time.monotonic() >= kill_time:
                kill_time = None
                killed = time.monotonic()
                soak.before_kill = set(soak.written)
                soak.written.clear()  # each is known again once a reply after the restart has it
                subprocess.run(["kill", "-9", str(engine_pid(api_pid))], check=True)
                while (await http.get("/health")).status_code != 200:
                    await asyncio.sleep(0.2)
                soak.kill_window = (killed, time.monotonic())
                print(f"  engine core killed at {killed - start:.0f} s; serving again after "
                      f"{soak.kill_window[1] - killed:.1f} s", flush=True)
            await asyncio.sleep(5)


async def replay(soak: Soak) -> list[str]:
    """Greedy replies sent again one at a time: the same tokens as under load."""
    differ = []
    for key, body, text in soak.replays[:40]:
        client = soak.client(key)
        message = await client.messages.create(**body, extra_body=GREEDY)
        if "tools" in body:
            again = str([(b.name, json.dumps(b.input, sort_keys=True))
                         for b in message.content if b.type == "tool_use"])
        else:
            again = message.content[0].text
        if again != text:
            differ.append(f"{body['messages'][-1]['content']!r}: {text[:60]!r} != {again[:60]!r}")
    return differ


async def soak_run(base_url: str, args: argparse.Namespace, api_pid: int, log: Path) -> None:
    soak = Soak(base_url, time.monotonic() + args.minutes * 60, random.Random(args.seed))
    samples: list[tuple[float, float, float]] = []
    print(f"soak: {args.users} users for {args.minutes} min on {cpu_model()}", flush=True)
    await asyncio.gather(chaos_and_watch(soak, api_pid, args.kill_at, samples),
                         *(user(soak) for _ in range(args.users)))
    await asyncio.sleep(args.idle_seconds)  # idle: the server gives back what it can
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        health = (await http.get("/health")).json()
    idle_rss = rss_mb(api_pid)
    differ = await replay(soak)
    report(soak, samples, health, idle_rss, differ, args)
    said = Counter(line.split(": ", 1)[-1][:150] for line in log.read_text(errors="replace").splitlines()
                   if " WARNING " in line or " ERROR " in line)
    print("\nthe server's warnings and errors:" + ("".join(f"\n  {n}x {what}" for what, n in said.most_common(12))
                                                   or " none"))


def in_window(outcome: Outcome, window: tuple[float, float] | None) -> bool:
    return window is not None and outcome.started <= window[1] + 1 and outcome.started + outcome.seconds >= window[0]


def report(soak: Soak, samples, health: dict, idle_rss: float, differ: list[str], args) -> None:
    by = defaultdict(list)
    for o in soak.outcomes:
        by[o.scenario].append(o)
    print("\n| scenario | requests | ok | failed outside the kill | failed in the kill window | p50 s | p95 s |")
    print("|---|---|---|---|---|---|---|")
    bad = Counter()
    for name, outs in sorted(by.items()):
        secs = sorted(o.seconds for o in outs if o.ok) or [float("nan")]
        outside = [o for o in outs if not o.ok and not in_window(o, soak.kill_window)]
        inside = [o for o in outs if not o.ok and in_window(o, soak.kill_window)]
        bad.update(o.problem for o in outside)
        print(f"| {name} | {len(outs)} | {sum(o.ok for o in outs)} | {len(outside)} | {len(inside)} | "
              f"{statistics.median(secs):.2f} | {secs[int(0.95 * (len(secs) - 1))]:.2f} |")
    seen_in_kill = Counter(o.problem for o in soak.outcomes if not o.ok and in_window(o, soak.kill_window))
    if soak.kill_window:
        print(f"\nkill window ({soak.kill_window[1] - soak.kill_window[0]:.1f} s): users saw "
              + (", ".join(f"{n}x {p}" for p, n in seen_in_kill.most_common()) or "nothing"))
        print("pinned documents asked again after the restart: "
              + (", ".join(f"{n} {k}" for k, n in soak.kill_survivors.items()) or "none")
              + " (lost: still being written to disk when the core died)")
    for problem, n in bad.most_common(10):
        print(f"  FAILED {n}x: {problem}")
    warm = [s for s in samples if s[0] >= 0.2 * args.minutes * 60] or samples
    half = [s for s in samples if s[0] >= 0.5 * args.minutes * 60] or samples
    slope = ((half[-1][1] - half[0][1]) / ((half[-1][0] - half[0][0]) / 60)) if len(half) > 1 else 0.0
    print(f"\nAPI process RSS: {warm[0][1]:.0f} MB after warm-up, {max(s[1] for s in samples):.0f} MB at "
          f"most, {samples[-1][1]:.0f} MB at the end, {idle_rss:.0f} MB after {args.idle_seconds} s idle; "
          f"second half {slope:+.1f} MB/min")
    print(f"engine core RSS: {samples[-1][2]:.0f} MB at the end (a new core after the kill)")
    leaked = health["total_blocks"] - health["free_blocks"] - health["cached_blocks"]
    print(f"/health at the end: {health['status']}, running {health['running']}, waiting {health['waiting']}, "
          f"free {health['free_blocks']} + cached {health['cached_blocks']} of {health['total_blocks']} blocks "
          f"(held by no request: {leaked == 0}), pinned entries {health['pinned_entries']} "
          f"(disk {health['disk_entries']}, reads {health['disk_reads']}), failed in the engine "
          f"{health['failed']}")
    print(f"greedy replays: {len(soak.replays[:40]) - len(differ)} of {len(soak.replays[:40])} the same"
          + "".join(f"\n  DIFFER {d}" for d in differ))
    clean = (not bad and not differ and leaked == 0 and health["running"] == 0 and health["waiting"] == 0
             and idle_rss - warm[0][1] < args.rss_margin_mb)
    print(f"\nverdict: {'CLEAN' if clean else 'NOT CLEAN'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--kill-at", type=float, default=0.5, help="share of the run; 0: no kill")
    parser.add_argument("--idle-seconds", type=int, default=20)
    parser.add_argument("--rss-margin-mb", type=float, default=100.0,
                        help="how much the idle API process may exceed its post-warm-up RSS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra `preheat serve` argument (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as disk:
        serve = ["--kv-cache-tokens", "8192", "--min-cache-tokens", "256", "--kv-disk-dir", disk,
                 *(a for t in TENANTS for a in ("--api-key", t)), *args.serve_arg]
        log = Path(disk) / "server.log"
        with preheat_server(serve, log=log) as base_url:
            port = int(base_url.rsplit(":", 1)[1])
            asyncio.run(soak_run(base_url, args, server_pid(port), log))


if __name__ == "__main__":
    main()
