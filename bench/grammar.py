"""What constrained decoding costs: decode tok/s with and without a tool-call grammar,
on the engine alone (embedded model), at 1 and 8 streams.

Both runs decode exactly ``--tokens`` tokens per stream after the same prompts: the
free run ignores EOS, and the grammar (a forced call whose schema wants a long
array) cannot finish sooner, so the only difference is the grammar's work. When
``llama-cpp-python`` is installed, llama.cpp's own grammar cost (the open-strings
schema as a GBNF grammar) is measured in the same run for comparison.

    python bench/grammar.py [--tokens 128] [--threads N] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from statistics import median

import torch
from api_peer import cpu_model
from engine import drive, greedy, random_ids

from preheat.config import EngineConfig
from preheat.engine.llm_engine import build_engine
from preheat.engine.request import GenerationRequest, SamplingParams
from preheat.loader.model_loader import load_model
from preheat.loader.embedded import embedded_model_path
from preheat.server.output_grammar import plan_output
from preheat.server.protocol import MessagesRequest



def schema(max_length: int | None) -> dict:
    """A tool's input; ``max_length`` bounds its strings (llguidance then counts characters,
    which costs it about 10x more per mask than open strings)."""
    string = {"type": "string"} | ({"maxLength": max_length} if max_length else {})
    return {"type": "object", "required": ["city", "notes"], "properties": {
        "city": string, "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "notes": {"type": "array", "minItems": 200, "items": string}}}


SCHEMAS = {"open strings": schema(None), "strings with maxLength": schema(12)}


def tool_grammar(input_schema: dict) -> str:
    body = MessagesRequest.model_validate({
        "model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "get_weather", "input_schema": input_schema}],
        "tool_choice": {"type": "any"}})
    return plan_output(body).grammar


def decode_rate(engine, streams: int, tokens: int, grammar: str | None, seed: int) -> float:
    params = (SamplingParams(max_tokens=tokens, temperature=0, grammar=grammar) if grammar
              else greedy(tokens))
    reqs = [GenerationRequest(random_ids(64, seed + i), params) for i in range(streams)]
    ttft, total = drive(engine, reqs)
    return streams * (tokens - 1) / (total - ttft)


@dataclass
class Figures:
    rates: list[float] = field(default_factory=list)  # tok/s, one per repeat
    ratios: list[float] = field(default_factory=list)  # against free decode in the same repeat
    masked: float = 0.0  # share of constrained tokens that needed a mask


def bench_preheat(args, loaded) -> dict[tuple[int, str], Figures]:
    """Decode figures by (streams, schema name or "free")."""
    engine, _ = build_engine(EngineConfig(kv_cache_tokens=16384, kv_disk_bytes=0,
                                          num_threads=args.threads), loaded=loaded)
    grammars = {name: tool_grammar(s) for name, s in SCHEMAS.items()}
    drive(engine, [GenerationRequest(random_ids(64, 1), SamplingParams(
        max_tokens=8, temperature=0, grammar=grammars["open strings"]))])  # warm-up
    out: dict[tuple[int, str], Figures] = {}
    for rep in range(args.repeats):
        for streams in (1, 8):
            # free first, then each grammar right after it: drift on a shared machine hits
            # a repeat's runs alike, so each repeat's ratio is the figure to trust
            seed = 1000 * rep + 100 * streams
            free = decode_rate(engine, streams, args.tokens, None, seed)
            out.setdefault((streams, "free"), Figures()).rates.append(free)
            for name, grammar in grammars.items():
                before = engine.grammars.masks_computed
                rate = decode_rate(engine, streams, args.tokens, grammar, seed)
                figures = out.setdefault((streams, name), Figures())
                figures.rates.append(rate)
                figures.ratios.append(rate / free)
                figures.masked = (engine.grammars.masks_computed - before) / (
                    streams * args.tokens)
    return out


def bench_llama_cpp(args) -> tuple[Figures, Figures] | None:
    try:
        from llama_cpp import Llama, LlamaGrammar
    except ImportError:
        print("llama.cpp: not installed (pip install -e '.[bench]'); no peer figures")
        return None
    llm = Llama(str(embedded_model_path()), n_ctx=4096, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    grammar = LlamaGrammar.from_json_schema(json.dumps(SCHEMAS["open strings"]), verbose=False)

    def rate(with_grammar: bool) -> float:
        llm.reset()
        gen = llm.generate(random_ids(64, 5), temp=0.0,
                           grammar=grammar if with_grammar else None)
        next(gen)
        start = time.perf_counter()
        for _ in range(args.tokens - 1):
            next(gen)
        return (args.tokens - 1) / (time.perf_counter() - start)

    rate(False)
    free, held = Figures(), Figures()
    for _ in range(args.repeats):
        free.rates.append(rate(False))
        held.rates.append(rate(True))
        held.ratios.append(held.rates[-1] / free.rates[-1])
    return free, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (median)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_model()}, {torch.get_num_threads()} threads; {args.tokens} tokens per stream, "
          f"median of {args.repeats}", flush=True)
    figures = bench_preheat(args, load_model())
    for streams in (1, 8):
        free = median(figures[(streams, "free")].rates)
        print(f"preheat, {streams} stream(s): {free:.1f} tok/s free", flush=True)
        for name in SCHEMAS:
            held = figures[(streams, name)]
            print(f"  a forced tool call, {name}: {median(held.rates):.1f} tok/s, "
                  f"{median(held.ratios):.2f}x free (repeats {min(held.ratios):.2f}-"
                  f"{max(held.ratios):.2f}; goal >= 0.90x); {held.masked:.0%} of tokens "
                  f"needed a mask")
    peer = bench_llama_cpp(args)
    if peer:
        free, held = peer
        print(f"llama.cpp, 1 stream: {median(free.rates):.1f} tok/s free, "
              f"{median(held.rates):.1f} with its GBNF grammar for the open-strings schema "
              f"({median(held.ratios):.2f}x; repeats {min(held.ratios):.2f}-"
              f"{max(held.ratios):.2f})")

if __name__ == "__main__":
    main()
