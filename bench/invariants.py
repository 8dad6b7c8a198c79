"""The engine's invariants on this machine's device and a model of your choice.

The test suite proves them on a CPU. This script checks them where the tests cannot run:
on a GPU (``--device cuda``), or with a model too big for the suite. Greedy decoding, so
each check compares token ids exactly:

- a cache hit gives the same tokens as a cold run (a pinned prefix, then a new suffix);
- a thread's next turn (its history held, the last partial block handed over) gives the
  same tokens as the same prompt run cold;
- requests decoded together give the same tokens as each run alone;
- a long prompt prefilled in chunks gives the same tokens as one prefilled whole.

    python bench/invariants.py [--device cuda] [--dtype bfloat16] [--model PATH]

Exits 1 if any check fails. A check, not a benchmark: it prints no timings.
"""
from __future__ import annotations

import argparse
import sys

from engine import drive_tokens, random_ids

from preheat.config import EngineConfig
from preheat.engine.llm_engine import LLMEngine, build_engine
from preheat.engine.request import CacheBreakpoint, GenerationRequest, SamplingParams

TOKENS = 24


def greedy(n: int = TOKENS) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def fresh(args: argparse.Namespace, **overrides) -> LLMEngine:
    config = EngineConfig(model=args.model, device=args.device, dtype=args.dtype, kv_cache_tokens=16384,
                          kv_disk_bytes=0, **overrides)
    return build_engine(config)[0]


def cache_hit(args: argparse.Namespace) -> bool:
    doc, suffix = random_ids(1000, 1), random_ids(20, 2)
    engine = fresh(args)
    bp = (CacheBreakpoint(len(doc), 300.0),)
    drive_tokens(engine, [GenerationRequest(doc + random_ids(20, 3), greedy(1), breakpoints=bp)])
    hit = drive_tokens(engine, [GenerationRequest(doc + suffix, greedy(), breakpoints=bp)])
    return hit == drive_tokens(fresh(args), [GenerationRequest(doc + suffix, greedy())])


def thread_turn(args: argparse.Namespace) -> bool:
    engine = fresh(args)
    prompt = random_ids(301, 4)  # leaves the held history mid-block
    first = drive_tokens(engine, [GenerationRequest(prompt, greedy(), hold_seconds=300.0)])[0]
    follow_up = prompt + first + random_ids(15, 5)
    warm = drive_tokens(engine, [GenerationRequest(follow_up, greedy())])
    return warm == drive_tokens(fresh(args), [GenerationRequest(follow_up, greedy())])


def batch(args: argparse.Namespace) -> bool:
    prompts = [random_ids(50 + 97 * i, 10 + i) for i in range(6)]
    together = drive_tokens(fresh(args), [GenerationRequest(p, greedy()) for p in prompts])
    alone = [drive_tokens(fresh(args), [GenerationRequest(p, greedy())])[0] for p in prompts]
    return together == alone


def chunking(args: argparse.Namespace) -> bool:
    prompt = random_ids(1500, 20)
    chunked = drive_tokens(fresh(args, max_step_tokens=256), [GenerationRequest(prompt, greedy())])
    whole = drive_tokens(fresh(args, max_step_tokens=2048), [GenerationRequest(prompt, greedy())])
    return chunked == whole


CHECKS = {"cache hit = cold run": cache_hit, "thread turn = cold run": thread_turn,
          "batched = alone": batch, "chunked prefill = whole": chunking}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--model", default=None, help="GGUF file or model folder (default: the embedded model)")
    args = parser.parse_args()
    print(f"device {args.device}, dtype {args.dtype}, model {args.model or 'embedded'}")
    failed = [name for name, check in CHECKS.items() if not check(args)]
    for name in CHECKS:
        print(f"  {name}: {'FAILED' if name in failed else 'ok'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
