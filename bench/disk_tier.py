"""The disk tier's own costs, on the engine alone (no HTTP).

1. Write and read-back speed of a pinned prefix's KV (``--tokens`` tokens): bytes, seconds
   to write on the writer thread, to read and verify on the reader thread, and to copy into
   the pool on the engine thread (the only part on the engine step).
2. Decode speed of ``--streams`` greedy streams alone, then while the writer thread writes
   prefixes back to back: what spilling costs the engine step on this machine's cores.

    python bench/disk_tier.py [--tokens 4000] [--streams 1] [--threads N]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from api_peer import cpu_model
from engine import drive, greedy, random_ids

from preheat.config import EngineConfig
from preheat.engine.kv.disk_format import prefix_key
from preheat.engine.kv.disk_tier import Loaded, Written
from preheat.engine.llm_engine import build_engine
from preheat.engine.request import CacheBreakpoint, GenerationRequest


def decode_rate(engine, streams: int, tokens: int, seed: int,
                between_steps: Callable[[], None] = lambda: None) -> float:
    """Output tokens a second of ``streams`` greedy streams after a short prompt."""
    requests = [GenerationRequest(random_ids(32, seed + i), greedy(tokens)) for i in range(streams)]
    ttft, total = drive(engine, requests, between_steps)
    return streams * (tokens - 1) / (total - ttft)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--decode-tokens", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    disk = Path(tempfile.mkdtemp(prefix="preheat-disk-bench-"))
    engine, model_id = build_engine(EngineConfig(kv_cache_tokens=65536, kv_disk_dir=disk,
                                                 num_threads=args.threads))
    print(f"{model_id}, {torch.get_num_threads()} threads, {cpu_model()}; disk tier {disk}")
    offload, tier = engine.offload, engine.offload.tier

    # a pinned prefix to copy around
    drive(engine, [GenerationRequest(random_ids(args.tokens + 1, 0), greedy(1),
                                     breakpoints=(CacheBreakpoint(args.tokens, 3600.0),))])
    [entry] = engine.radix.pins.entries()
    blocks = engine.radix.match("", list(entry.tokens))
    nbytes = tier.entry_bytes(len(blocks))

    def write_once(tag: int) -> None:
        tier.write(f"bench-{tag}", entry.tokens, 3600.0, time.time() + 3600,
                   lambda first: offload._gather(blocks[first:]))

    start = time.perf_counter()
    write_once(0)
    assert tier.flush(600)
    write_s = time.perf_counter() - start
    got = tier.completions()
    assert any(isinstance(c, Written) for c in got), got
    start = time.perf_counter()
    tier.load(prefix_key("bench-0", entry.tokens))
    loaded = None
    while loaded is None:
        tier.wait(1.0)
        loaded = next((c for c in tier.completions() if isinstance(c, Loaded)), None)
    read_s = time.perf_counter() - start
    fresh = engine.pool.allocate(len(blocks))
    start = time.perf_counter()
    offload.copy_in(fresh, loaded.kv)  # the engine thread's part of a read
    copy_s = time.perf_counter() - start
    assert torch.equal(engine.runner.kv_cache[:, :, fresh], engine.runner.kv_cache[:, :, blocks])
    engine.pool.decref(fresh)
    print(f"a {args.tokens}-token prefix is {nbytes / 2**20:.0f} MiB: written in {write_s * 1000:.0f} ms "
          f"({nbytes / write_s / 2**30:.2f} GiB/s), read and verified in {read_s * 1000:.0f} ms, "
          f"copied into the pool in {copy_s * 1000:.0f} ms (the engine thread's share)")

    alone = decode_rate(engine, args.streams, args.decode_tokens, 1)
    writes = [0]

    def keep_writer_busy() -> None:
        if tier._writes.unfinished_tasks < 2:
            writes[0] += 1
            write_once(writes[0])

    busy = decode_rate(engine, args.streams, args.decode_tokens, 2, keep_writer_busy)
    tier.flush(600)
    print(f"decode, {args.streams} stream(s): {alone:.1f} tok/s alone, {busy:.1f} tok/s while "
          f"{writes[0]} prefixes were written beside it ({busy / alone:.2f}x)")


if __name__ == "__main__":
    main()
