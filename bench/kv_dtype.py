"""Decode speed by KV cache dtype at long contexts, on the engine alone (embedded model).

One greedy stream decodes 100 tokens after a random prompt of each ``--contexts`` length,
with the cache in float32 and in float16 (``--kv-dtype auto`` with int4 weights): what the
16-bit cache changes per token, where decode attention reads the whole context.

    python bench/kv_dtype.py [--contexts 1000,4000,7600] [--threads N]
"""
from __future__ import annotations

import argparse

import torch
from api_peer import cpu_model
from engine import drive, greedy, random_ids

from preheat.config import EngineConfig
from preheat.engine.llm_engine import build_engine
from preheat.engine.request import GenerationRequest
from preheat.loader.model_loader import load_model

DECODE_TOKENS = 100


def decode_rate(loaded, context: int, kv_dtype: str, threads: int | None) -> float:
    engine, _ = build_engine(EngineConfig(kv_cache_tokens=context + 2 * DECODE_TOKENS, kv_disk_bytes=0,
                                          kv_dtype=kv_dtype, num_threads=threads), loaded=loaded)
    ttft, total = drive(engine, [GenerationRequest(random_ids(context, context), greedy(DECODE_TOKENS + 1))])
    return DECODE_TOKENS / (total - ttft)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", default="1000,4000,7600")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    loaded = load_model()
    print(f"{cpu_model()}, {torch.get_num_threads() if args.threads is None else args.threads} threads")
    for context in (int(c) for c in args.contexts.split(",")):
        fp32, fp16 = (decode_rate(loaded, context, kv, args.threads) for kv in ("float32", "float16"))
        print(f"context {context}: decode {fp32:.1f} tok/s with float32 KV, {fp16:.1f} with float16 "
              f"({fp16 / fp32:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
