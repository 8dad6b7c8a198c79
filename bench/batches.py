"""Message Batches on the embedded model: N questions about one cached document.

The goals (issue 23):
- as a batch, the N questions finish in <= 0.5x the wall time of sending them one at a
  time through ``/v1/messages``, and >= 95% of the items read the document from the cache;
- while the batch runs, an interactive streaming request's TTFT p50 is <= 1.5x its idle
  TTFT, and its tok/s >= 0.7x idle.

Each side gets the same ~``--document-tokens`` document (cached with ``cache_control``,
behind a fresh nonce per side) and the same questions, ``--max-tokens`` greedy output
tokens each. Cost is priced as Claude Sonnet 4.6 would bill it (batch: half price).
No peer serves this API (llama.cpp, vLLM and SGLang have no batch endpoint), so the
comparison is against preheat's own one-by-one run, in the same run.

After the server stops, the same items run on the engine alone, in this process (no HTTP,
no batch store, every item admitted at once after the document is cached): the least
time any batch scheduler could take with these kernels on this CPU, printed against the
one-by-one wall time as the floor of the batch ratio.

    python bench/batches.py [--items 500] [--threads 2]

Figures, not tests: read them as ratios, on the CPU named in the output.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import anthropic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_peer import cpu_model, preheat_command  # noqa: E402

from preheat.client.bench.pricing import PriceTable  # noqa: E402
from preheat.client.bench.server_process import free_port, running_server  # noqa: E402
from preheat.client.token_usage import TokenUsage, total_usage  # noqa: E402

GPL3 = Path("/usr/share/common-licenses/GPL-3")
MODEL = "claude-sonnet-4-6"
INTERACTIVE = "Write two sentences about the sea."
PROBES = 8  # interactive requests per condition


def document(tokens: int) -> str:
    words = GPL3.read_text().split()[: int(tokens * 0.75)]
    return f"Reference {uuid.uuid4().hex}.\n" + " ".join(words)


def system(doc: str) -> list[dict]:
    return [{"type": "text", "text": doc, "cache_control": {"type": "ephemeral"}}]


def question(i: int) -> str:
    return f"Question {i}: in one sentence, what does part {i % 17 + 1} of this text allow?"


def params(doc: str, i: int, max_tokens: int) -> dict:
    return {"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "system": system(doc),
            "messages": [{"role": "user", "content": question(i)}]}


def one_by_one(client: anthropic.Anthropic, args: argparse.Namespace) -> tuple[float, list]:
    n, max_tokens = args.items, args.max_tokens
    doc = document(args.document_tokens)
    start = time.perf_counter()
    usages = []
    for i in range(n):
        body = params(doc, i, max_tokens)
        temperature = body.pop("temperature")
        usages.append(client.messages.create(**body, extra_body={"temperature": temperature}).usage)
    return time.perf_counter() - start, usages


def as_batch(client: anthropic.Anthropic, args: argparse.Namespace,
             during=None) -> tuple[float, list, object]:
    n, max_tokens = args.items, args.max_tokens
    doc = document(args.document_tokens)
    start = time.perf_counter()
    batch = client.messages.batches.create(requests=[
        {"custom_id": f"q{i}", "params": params(doc, i, max_tokens)} for i in range(n)])
    probes = None
    if during is not None:
        probes = during()
    while client.messages.batches.retrieve(batch.id).processing_status != "ended":
        time.sleep(0.25)
    wall = time.perf_counter() - start
    usages = [r.result.message.usage for r in client.messages.batches.results(batch.id)
              if r.result.type == "succeeded"]
    return wall, usages, probes


def interactive(client: anthropic.Anthropic, max_tokens: int) -> tuple[float, float]:
    """One streamed request: its TTFT and its decode rate after the first token."""
    start = time.perf_counter()
    first = None
    with client.messages.stream(model=MODEL, max_tokens=max_tokens,
                                messages=[{"role": "user", "content": INTERACTIVE}],
                                extra_body={"temperature": 0}) as stream:
        for _ in stream.text_stream:
            if first is None:
                first = time.perf_counter()
        final = stream.get_final_message()
    end = time.perf_counter()
    rate = (final.usage.output_tokens - 1) / (end - first) if end > first else 0.0
    return first - start, rate


def probe_series(client: anthropic.Anthropic, max_tokens: int) -> list[tuple[float, float]]:
    return [interactive(client, max_tokens) for _ in range(PROBES)]


def read_share(usages: list, document_tokens: int) -> float:
    """The share of requests that read (most of) the document from the cache."""
    read = sum(1 for u in usages if u.cache_read_input_tokens >= document_tokens * 0.8)
    return read / max(1, len(usages))


def cost(usages: list, batch: bool, prices: PriceTable) -> float:
    dollars = prices.cost(total_usage([TokenUsage.from_sdk(u) for u in usages]))
    return dollars / 2 if batch else dollars


def engine_floor(args: argparse.Namespace) -> float:
    """Seconds for the engine alone to answer the items, all admitted at once after one
    request has cached the document (the same prompts the server renders, as tokens)."""
    from preheat.config import EngineConfig
    from preheat.engine.llm_engine import build_engine
    from preheat.engine.request import CacheBreakpoint, GenerationRequest, SamplingParams

    engine, _ = build_engine(EngineConfig(num_threads=args.threads, kv_disk_bytes=0,
                                          kv_cache_tokens=65536, max_waiting=args.items))
    doc, tokenizer = document(args.document_tokens), engine.tokenizer
    cached = len(tokenizer.encode_prompt(tokenizer.render_chat(
        [{"role": "system", "content": doc}], add_generation_prompt=False))[0])
    greedy = SamplingParams(max_tokens=args.max_tokens, temperature=0)

    def item(i: int) -> GenerationRequest:
        ids = tokenizer.encode_prompt(tokenizer.render_chat(
            [{"role": "system", "content": doc}, {"role": "user", "content": question(i)}]))[0]
        return GenerationRequest(ids, greedy, breakpoints=(CacheBreakpoint(cached, 300.0),))

    def run(requests: list[GenerationRequest]) -> None:
        for request in requests:
            engine.enqueue(engine.prepare(request))
        while engine.has_work:
            engine.step()

    run([item(-1)])  # writes the document's KV, as the batch's first item does
    items = [item(i) for i in range(args.items)]
    start = time.perf_counter()
    run(items)
    return time.perf_counter() - start


def main(args: argparse.Namespace) -> None:
    prices = PriceTable()
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        command = preheat_command(port, args.threads, [
            "--kv-disk-dir", str(Path(folder) / "kv"), "--batches-db",
            str(Path(folder) / "batches.sqlite3"), "--responses-db",
            str(Path(folder) / "responses.sqlite3")])
        print(" ".join(command), flush=True)
        with running_server(command, port, Path(folder) / "server.log") as base_url:
            client = anthropic.Anthropic(base_url=base_url, api_key="bench", max_retries=0,
                                         timeout=3600)
            interactive(client, 8)  # first-request costs
            idle = probe_series(client, args.max_tokens)
            print(f"idle interactive: TTFT p50 {statistics.median(t for t, _ in idle):.3f} s, "
                  f"{statistics.median(r for _, r in idle):.1f} tok/s", flush=True)
            seq_wall, seq_usages = one_by_one(client, args)
            print(f"one by one: {args.items} in {seq_wall:.1f} s", flush=True)
            batch_wall, batch_usages, _ = as_batch(client, args)
            print(f"batch: {args.items} in {batch_wall:.1f} s", flush=True)
            probes: list = []

            def during() -> None:
                time.sleep(2.0)  # the batch is under way
                worker = threading.Thread(target=lambda: probes.extend(
                    probe_series(client, args.max_tokens)))
                worker.start()
                return worker

            _, _, worker = as_batch(client, args, during)
            worker.join()
    floor = engine_floor(args)
    idle_ttft = statistics.median(t for t, _ in idle)
    idle_rate = statistics.median(r for _, r in idle)
    busy_ttft = statistics.median(t for t, _ in probes)
    busy_rate = statistics.median(r for _, r in probes)
    print()
    print(f"Message Batches, embedded model, {args.items} questions about one "
          f"~{args.document_tokens}-token cached document, {args.max_tokens} greedy output "
          f"tokens, {args.threads} threads, {cpu_model()}")
    print(f"{'':<28}{'wall':>9}{'read the cache':>16}{'cost (Sonnet 4.6 prices)':>26}")
    print(f"{'one by one (/v1/messages)':<28}{seq_wall:>8.1f}s{read_share(seq_usages, args.document_tokens):>16.1%}"
          f"{cost(seq_usages, False, prices):>25.4f}$")
    print(f"{'as a batch':<28}{batch_wall:>8.1f}s{read_share(batch_usages, args.document_tokens):>16.1%}"
          f"{cost(batch_usages, True, prices):>25.4f}$")
    print(f"{'the engine alone, all at once':<28}{floor:>8.1f}s")
    print(f"batch / one by one wall time: {batch_wall / seq_wall:.2f}x (goal <= 0.5x); the "
          f"engine alone / one by one: {floor / seq_wall:.2f}x (the floor of that ratio)")
    print(f"interactive beside a running batch: TTFT p50 {busy_ttft:.3f} s vs {idle_ttft:.3f} s "
          f"idle ({busy_ttft / idle_ttft:.2f}x, goal <= 1.5x); {busy_rate:.1f} vs "
          f"{idle_rate:.1f} tok/s ({busy_rate / idle_rate:.2f}x, goal >= 0.7x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--document-tokens", type=int, default=3000)
    parser.add_argument("--max-tokens", type=int, default=64)
    main(parser.parse_args())
