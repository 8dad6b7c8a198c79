"""Engine benchmark on this CPU: preheat vs llama.cpp on the same GGUF and thread count.

Prints prefill and decode throughput, cold vs cached TTFT and peak memory, and,
when `llama-cpp-python` is installed (`pip install -e '.[bench]'`), the same
figures for llama.cpp measured in this run with the ratios. Figures, not tests.

    python bench/engine.py [--threads 2] [--model PATH] [--no-llama-cpp]

On CPUs with AMX (recent Xeons), llama-cpp-python 0.3.36 built with its default
`-march=native` crashes in its AMX matmul; build it without AMX for a peer that runs:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
      -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" \
      pip install --no-cache-dir llama-cpp-python
"""
from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from preheat.config import EngineConfig
from preheat.engine.llm_engine import LLMEngine, build_engine
from preheat.engine.output import Finished, TextDelta
from preheat.engine.request import CacheBreakpoint, GenerationRequest, SamplingParams
from preheat.kernels.quant_matmul import kernel_isa, load_quant_kernel
from preheat.loader.embedded import embedded_model_path

DECODE_TOKENS = 128
STREAMS = 8


@dataclass
class Figures:
    prefill_512: float = 0.0
    prefill_4096: float = 0.0
    decode_1: float = 0.0
    decode_8: float = 0.0
    ttft_cold: float = 0.0
    ttft_cached: float = 0.0


def random_ids(n: int, seed: int) -> list[int]:
    # Ordinary-text id range; fresh seeds keep the prefix cache out of throughput runs.
    return torch.randint(300, 40000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def drive(engine: LLMEngine, requests: list[GenerationRequest],
          between_steps: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """Run requests together; returns (time to the first token of any, time to the end)."""
    for r in requests:
        engine.enqueue(engine.prepare(r))
    start, first = time.perf_counter(), None
    while engine.has_work:
        between_steps()
        for _, ev in engine.step():
            if first is None and isinstance(ev, (TextDelta, Finished)):
                first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


def drive_tokens(engine: LLMEngine, requests: list[GenerationRequest]) -> list[list[int]]:
    """Run requests together; returns each one's generated token ids, in order."""
    for r in requests:
        engine.enqueue(engine.prepare(r))
    done: dict[str, list[int]] = {}
    while engine.has_work:
        for rid, ev in engine.step():
            if isinstance(ev, Finished):
                done[rid] = ev.output_ids
    return [done[r.request_id] for r in requests]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def bench_preheat(args, weight_format: str) -> Figures:
    t0 = time.perf_counter()
    engine, model_id = build_engine(EngineConfig(model=args.model, num_threads=args.threads,
                                                 kv_cache_tokens=16384, kv_disk_bytes=0, max_step_tokens=512,
                                                 weight_format=weight_format))
    kernel = "" if weight_format == "dense" else \
        f", {kernel_isa() + ' quantized' if load_quant_kernel() else 'PyTorch int4'} kernel"
    print(f"preheat ({weight_format}): {model_id} loaded in {time.perf_counter() - t0:.2f} s, "
          f"{args.threads} threads{kernel}", flush=True)
    f = Figures()
    drive(engine, [GenerationRequest(random_ids(64, 99), greedy(4))])  # warm-up
    for n, attr in ((512, "prefill_512"), (4096, "prefill_4096")):
        ttft, _ = drive(engine, [GenerationRequest(random_ids(n, n), greedy(1))])
        setattr(f, attr, n / ttft)
    ttft, total = drive(engine, [GenerationRequest(random_ids(16, 1), greedy(DECODE_TOKENS))])
    f.decode_1 = (DECODE_TOKENS - 1) / (total - ttft)
    reqs = [GenerationRequest(random_ids(16, 10 + i), greedy(DECODE_TOKENS)) for i in range(STREAMS)]
    ttft, total = drive(engine, reqs)
    f.decode_8 = STREAMS * (DECODE_TOKENS - 1) / (total - ttft)
    doc = random_ids(4096, 7)
    bp = (CacheBreakpoint(len(doc), 300.0),)
    f.ttft_cold, _ = drive(engine, [GenerationRequest(doc + random_ids(32, 8), greedy(1), breakpoints=bp)])
    f.ttft_cached, _ = drive(engine, [GenerationRequest(doc + random_ids(32, 9), greedy(1), breakpoints=bp)])
    return f


def bench_llama_cpp(args) -> Figures | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama.cpp: not installed (pip install -e '.[bench]'); no peer figures")
        return None
    path = args.model or str(embedded_model_path())
    llm = Llama(path, n_ctx=8192, n_threads=args.threads, n_threads_batch=args.threads,
                n_batch=512, verbose=False)
    f = Figures()

    def prefill(ids: list[int]) -> float:
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        return time.perf_counter() - t

    prefill(random_ids(64, 99))
    f.prefill_512 = 512 / prefill(random_ids(512, 512))
    f.prefill_4096 = 4096 / prefill(random_ids(4096, 4096))
    llm.reset()
    gen = llm.generate(random_ids(16, 1), temp=0.0)
    next(gen)
    t = time.perf_counter()
    for _ in range(DECODE_TOKENS - 1):
        next(gen)
    f.decode_1 = (DECODE_TOKENS - 1) / (time.perf_counter() - t)
    doc = random_ids(4096, 7)
    f.ttft_cold = prefill(doc + random_ids(32, 8))
    # llama.cpp keeps the previous context's KV: evaluating only the new suffix is its cache hit.
    llm.n_tokens = len(doc)
    t = time.perf_counter()
    llm.eval(random_ids(32, 9))
    f.ttft_cached = time.perf_counter() - t
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="GGUF path (default: the embedded SmolLM2)")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--weight-format", choices=["dense", "int4", "both"], default="both")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    formats = ["dense", "int4"] if args.weight_format == "both" else [args.weight_format]
    ours = {}
    for fmt in formats:
        ours[fmt] = bench_preheat(args, fmt)
        # peak so far: the first format's figure is its own, later ones include earlier engines
        print(f"peak RSS after preheat ({fmt}): "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", flush=True)
    peer = None if args.no_llama_cpp else bench_llama_cpp(args)
    for fmt, figures in ours.items():
        report(fmt, figures, peer)


def report(fmt: str, ours: Figures, peer: Figures | None) -> None:
    rows = [("prefill 512 tok (tok/s)", "prefill_512"), ("prefill 4096 tok (tok/s)", "prefill_4096"),
            ("decode, 1 stream (tok/s)", "decode_1"),
            (f"decode, {STREAMS} streams aggregate (tok/s)", "decode_8"),
            ("TTFT 4096+32 cold (s)", "ttft_cold"), ("TTFT 4096+32 cached (s)", "ttft_cached")]
    print(f"\n{'figure':<38}{'preheat ' + fmt:>14}{'llama.cpp':>11}{'ratio':>8}")
    for label, attr in rows:
        a = getattr(ours, attr)
        b = getattr(peer, attr) if peer else None
        ratio = f"{a / b:.2f}x" if b else "-"
        print(f"{label:<38}{a:>14.3f}{(f'{b:.3f}' if b else '-'):>11}{ratio:>8}")
    print(f"cached TTFT / cold TTFT: {ours.ttft_cached / ours.ttft_cold:.1%} (goal <= 5%)")
    if peer:
        print(f"prefill 512 vs llama.cpp: {ours.prefill_512 / peer.prefill_512:.2f}x (goal >= 1.5x)")
        print(f"{STREAMS}-stream aggregate decode vs llama.cpp 1 stream: "
              f"{ours.decode_8 / peer.decode_1:.2f}x (goal >= 3x)")
        print(f"1-stream decode vs llama.cpp: {ours.decode_1 / peer.decode_1:.2f}x (goal >= 0.5x)")


if __name__ == "__main__":
    main()
